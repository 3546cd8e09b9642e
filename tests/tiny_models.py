"""Tiny models for fast tests, loadable as ``tests/tiny_models.py:tiny``."""

import time
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def tiny(in_chans: int = 3, classes: int = 2) -> nn.Sequential:
    """Leaf layers: 0 conv(4), 1 relu, 2 pool/2, 3 conv(6), 4 relu, 5 gap, 6 flatten, 7 linear."""
    return nn.Sequential(
        nn.Conv2d(in_chans, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, classes),
    )


def not_a_model() -> str:
    return "hello"


class WindowAttention(nn.Module):
    """Self-attention inside ``window`` x ``window`` blocks of a map, shifted like Swin's."""

    def __init__(self, channels: int, window: int, shift: int = 0) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n, s = self.window, self.shift
        t = x.permute(0, 2, 3, 1)
        if s:
            t = torch.roll(t, (-s, -s), (1, 2))
        t = t.reshape(b, h // n, n, w // n, n, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n * n, c)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        t = self.proj((q @ k.transpose(-2, -1) / c**0.5).softmax(-1) @ v)
        t = t.reshape(b, h // n, w // n, n, n, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        if s:
            t = torch.roll(t, (s, s), (1, 2))
        return x + t.permute(0, 3, 1, 2)


class WindowConv(nn.Module):
    """A convolution run on each window separately, windows stacked in the batch (EfficientViT
    and MobileViT style): zero padding at every window's border."""

    def __init__(self, channels: int, window: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.window = window
        self.conv = nn.Conv2d(channels, channels, kernel, stride, kernel // 2, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.window
        t = x.view(b, c, h // n, n, w // n, n).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, n, n)
        t = self.conv(t)
        m = t.shape[-1]
        t = t.view(b, h // n, w // n, c, m, m).permute(0, 3, 1, 4, 2, 5)
        return t.reshape(b, c, h // n * m, w // n * m)


class PatchMerging(nn.Module):
    """2x2 neighbours stacked into channels, then a linear layer (Swin's downsampling)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * channels, 2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2, c)
        t = t.permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(t).permute(0, 3, 1, 2)


class SpaceToDepth(nn.Module):
    """Each 2x2 block into channels (TResNet's stem)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4)
        return t.reshape(b, 4 * c, h // 2, w // 2)


class OutlookAttention(nn.Module):
    """VOLO's outlook attention: every ``kernel`` x ``kernel`` window (``F.unfold``, overlapping
    when ``stride`` < ``kernel``) is mixed by weights computed from the average-pooled map,
    and the windows are summed back into place by ``F.fold``."""

    def __init__(self, channels: int, kernel: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.v = nn.Conv2d(channels, channels, 1)
        self.attn = nn.Conv2d(channels, kernel**4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k, s, p = self.kernel, self.stride, self.kernel // 2
        v = F.unfold(self.v(x), k, padding=p, stride=s).reshape(b, c, k * k, -1)
        pooled = F.avg_pool2d(x, s, s, ceil_mode=True)
        a = self.attn(pooled).flatten(2).transpose(1, 2).reshape(b, -1, k * k, k * k)
        t = a.softmax(-1) @ v.permute(0, 3, 2, 1)  # windows, kernel position, channels
        t = t.permute(0, 3, 2, 1).reshape(b, c * k * k, -1)
        return x + F.fold(t, (h, w), k, padding=p, stride=s)


class RelativeLogits(nn.Module):
    """Relative-position logits of each query of a block for each key of its window, along
    rows and columns, made absolute by the pad-flatten-pad skew (HaloNet's ``PosEmbedRel``)."""

    def __init__(self, channels: int, block: int, window: int) -> None:
        super().__init__()
        self.block, self.window = block, window
        self.rows = nn.Parameter(torch.randn(2 * window - 1, channels))
        self.cols = nn.Parameter(torch.randn(2 * window - 1, channels))

    def _skew(self, q: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """``(M, n, n, C)`` queries to ``(M, n, window, n, window)`` logits along the last axis."""
        n, win, rel = self.block, self.window, table.shape[0]
        x = (q @ table.t()).reshape(-1, n, rel)
        x = F.pad(F.pad(x, [0, 1]).flatten(1), [0, rel - n]).reshape(-1, n + 1, rel)
        return x[:, :n, win - 1 :].reshape(-1, n, 1, n, win).expand(-1, -1, win, -1, -1)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        b, blocks, _, c = q.shape
        n = self.block
        q = q.reshape(-1, n, n, c)
        along_x = self._skew(q, self.cols).permute(0, 1, 3, 2, 4)
        along_y = self._skew(q.transpose(1, 2), self.rows).permute(0, 3, 1, 4, 2)
        return (along_x + along_y).reshape(b, blocks, n * n, -1)


class HaloAttention(nn.Module):
    """HaloNet's attention: the queries of each ``block`` x ``block`` block attend to the block
    and a ``halo`` around it, windows cut by ``Tensor.unfold`` from the zero-padded map; with
    ``stride`` 2 the queries come from a strided convolution."""

    def __init__(self, channels: int, block: int, halo: int, stride: int = 1) -> None:
        super().__init__()
        self.block, self.halo, self.stride = block, halo, stride
        self.q = nn.Conv2d(channels, channels, 1, stride=stride)
        self.kv = nn.Conv2d(channels, 2 * channels, 1)
        self.relative = RelativeLogits(channels, block // stride, block + 2 * halo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n, m, bq = self.block, self.halo, self.block // self.stride
        rows, cols = h // n, w // n
        q = self.q(x).reshape(b, c, rows, bq, cols, bq).permute(0, 2, 4, 3, 5, 1)
        q = q.reshape(b, rows * cols, bq * bq, c)
        win = n + 2 * m
        kv = F.pad(self.kv(x), [m, m, m, m]).unfold(2, win, n).unfold(3, win, n)
        kv = kv.reshape(b, 2 * c, rows * cols, win * win).permute(0, 2, 3, 1)
        k, v = kv.split(c, dim=-1)
        t = (q @ k.transpose(-1, -2) / c**0.5 + self.relative(q)).softmax(-1) @ v
        t = t.reshape(b, rows, cols, bq, bq, c).permute(0, 5, 1, 3, 2, 4)
        return t.reshape(b, c, rows * bq, cols * bq)


class BlockTransform(nn.Module):
    """CSATv2's DCT stem: a fixed linear transform of each ``block`` x ``block`` block along
    rows and columns, its coefficients reordered by an index, then a 1x1 convolution."""

    def __init__(self, channels: int, block: int, out_channels: int) -> None:
        super().__init__()
        self.block = block
        self.register_buffer("basis", torch.rand(block, block))
        self.register_buffer("order", torch.randperm(block * block))
        self.conv = nn.Conv2d(channels * block * block, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.block
        t = x.reshape(b, c, h // n, n, w // n, n).permute(0, 2, 4, 1, 3, 5)
        t = F.linear(F.linear(t, self.basis).transpose(-1, -2), self.basis).transpose(-1, -2)
        t = t.reshape(-1, c, n * n)[:, :, self.order]
        t = t.reshape(b, h // n, w // n, c * n * n).permute(0, 3, 1, 2)
        return self.conv(t)


def block_transform() -> nn.Sequential:
    """A DCT-like stem on 4x4 blocks, then outlook attention on its map of blocks."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        BlockTransform(4, 4, 8),
        nn.Conv2d(8, 8, 3, padding=1),
        OutlookAttention(8),
        nn.Conv2d(8, 8, 3, padding=1),
    )


def outlook_and_halo() -> nn.Sequential:
    """Outlook attention (overlapping ``F.unfold``/``F.fold``) and halo attention
    (``Tensor.unfold``), plain and strided."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        OutlookAttention(8),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        OutlookAttention(8, stride=1),
        HaloAttention(8, block=4, halo=1),
        HaloAttention(8, block=4, halo=2, stride=2),
    )


def windowed() -> nn.Sequential:
    """Window attention (plain and shifted), convolution in windows, patch merging and
    space-to-depth."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 4, 4),
        WindowAttention(8, 4),
        nn.Conv2d(8, 8, 3, padding=1),
        WindowAttention(8, 4, shift=2),
        WindowConv(8, 4),
        PatchMerging(8),
        WindowConv(16, 4, kernel=3, stride=2),
        nn.Conv2d(16, 16, 3, padding=1),
        SpaceToDepth(),
        nn.Conv2d(64, 8, 1),
    )


class LinearAttention(nn.Module):
    """EfficientViT's LiteMLA: ReLU linear attention over the heads of q, k, v from a 1x1
    convolution and of their 5x5 depthwise aggregate. ``k^T @ v`` sums over every token (global
    context), so each output unit reads what its query reads."""

    def __init__(self, channels: int, dim: int = 4) -> None:
        super().__init__()
        self.dim = dim
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.aggreg = nn.Sequential(
            nn.Conv2d(3 * channels, 3 * channels, 5, padding=2, groups=3 * channels),
            nn.Conv2d(3 * channels, 3 * channels, 1, groups=3 * channels // dim),
        )
        self.proj = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        qkv = self.qkv(x)
        qkv = torch.cat([qkv, self.aggreg(qkv)], dim=1)
        qkv = qkv.reshape(b, -1, 3 * self.dim, h * w).transpose(-1, -2)
        q, k, v = F.relu(qkv).chunk(3, dim=-1)
        v = F.pad(v, (0, 1), value=1.0)
        out = q @ (k.transpose(-1, -2) @ v)
        out = out[..., :-1] / (out[..., -1:] + 1e-6)
        return x + self.proj(out.transpose(-1, -2).reshape(b, -1, h, w))


def linear_attention() -> nn.Sequential:
    """Two LiteMLA blocks, the second after a stride-2 convolution."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        LinearAttention(8),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        LinearAttention(8),
        nn.Conv2d(8, 8, 1),
    )


class RowRNN(nn.Module):
    """An LSTM along each row of a map (Sequencer's horizontal branch)."""

    def __init__(self, channels: int, bidirectional: bool) -> None:
        super().__init__()
        self.rnn = nn.LSTM(channels, channels, batch_first=True, bidirectional=bidirectional)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.rnn(x.permute(0, 2, 3, 1).reshape(b * h, w, c))[0]
        return t.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def tiny_vgg(in_chans: int = 3) -> nn.Sequential:
    """VGG-like: 3x3 convolutions (padding 1) and 2x2 max pooling; total stride 4."""
    return nn.Sequential(
        nn.Conv2d(in_chans, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
    )


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.down = nn.Conv2d(cin, cout, 1, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.bn(self.conv1(x)))) + self.down(x))


def tiny_resnet(in_chans: int = 3) -> nn.Sequential:
    """ResNet-like: a 7x7 stride-2 stem, padded max pooling, strided residual blocks (total
    stride 16, receptive-field centres off the cell centres, as in ResNet)."""
    model = nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(in_chans, 4, 7, 2, 3),
            relu=nn.ReLU(),
            pool=nn.MaxPool2d(3, 2, 1),
            block1=_Block(4, 6, 1),
            block2=_Block(6, 8, 2),
            block3=_Block(8, 8, 2),
        )
    )
    with torch.no_grad():  # running statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


def tiny_se() -> nn.Sequential:
    """A squeeze-and-excitation gate: every unit depends on the whole image's mean."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), _SqueezeExcite(4), nn.Conv2d(4, 4, 3, padding=1)
    )


class _Slow(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return x


def slow_tiny() -> nn.Sequential:
    """:func:`tiny` that takes 0.05 s per forward pass (for tests that interrupt a run)."""
    return nn.Sequential(_Slow(), *tiny())


def slow_to_build() -> nn.Sequential:
    """:func:`tiny` that takes 1.2 s to build (as a large model's library takes to import)."""
    time.sleep(1.2)
    return tiny()


def tiny_hourglass() -> nn.Sequential:
    """Down by 4 with strided convolutions, back up by a stride-4 transposed convolution: the
    output has stride 1, the layers in between stride 2 and 4."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, 2, 1),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 4, 4, 4),
    )


def tiny_not_in_ray_actors() -> nn.Sequential:
    """:func:`tiny`, but in a Ray actor building it fails (as a model file missing on a
    cluster's nodes would), for the Ray engine's error path."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
        raise RuntimeError("this model cannot be built here: not in a Ray actor")
    return tiny()
