#!/usr/bin/env python3
"""PyTorch eager timing of the two vision towers `iadgpt bench encode` builds, for the
comparison in src/vision/README.md. Random weights of the real shapes, batch 1, no grad.

  python3 scripts/pytorch-vit-bench.py --arch imagebind-huge --dtype bf16 --threads 2 --iters 5

Needs PyTorch (Debian: apt install python3-torch, 1.13). The tower is the pre-LN ViT both
families use: patch conv, class token, position embedding, LayerNorm, blocks of
nn.MultiheadAttention + MLP, final LayerNorm, projection. ImageBind's stem is a Conv3d over two
copies of the frame; a Conv2d with the summed kernel does the same work in half the FLOPs, which
favours PyTorch here.

--dtype dynamic-int8 is PyTorch's own int8 path, the one to set beside `bench encode --quant q8`:
torch.ao.quantization.quantize_dynamic over the fp32 model (int8 weights per tensor, activations
quantized per call; fbgemm). It quantizes the nn.Linear modules (MLP, projection); attention's
packed q/k/v and output projections stay fp32, as nn.MultiheadAttention keeps them.
"""
import argparse
import time

import torch
import torch.nn as nn

ARCHS = {  # image, patch, width, layers, heads, mlp, embed, activation
    "imagebind-huge": (224, 14, 1280, 32, 16, 5120, 1024, "gelu"),
    "clip-vit-l-14-336": (336, 14, 1024, 24, 16, 4096, 768, "quick_gelu"),
}


class QuickGelu(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    def __init__(self, width, heads, mlp, activation):
        super().__init__()
        self.norm_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_2 = nn.LayerNorm(width)
        act = nn.GELU() if activation == "gelu" else QuickGelu()
        self.mlp = nn.Sequential(nn.Linear(width, mlp), act, nn.Linear(mlp, width))

    def forward(self, x):
        h = self.norm_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm_2(x))


class Vit(nn.Module):
    def __init__(self, image, patch, width, layers, heads, mlp, embed, activation):
        super().__init__()
        self.stem = nn.Conv2d(3, width, patch, patch, bias=False)
        tokens = (image // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(Block(width, heads, mlp, activation) for _ in range(layers))
        self.post = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed, bias=False)

    def forward(self, pixels):
        x = self.stem(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        x = self.pre(x)
        for b in self.blocks:
            x = b(x)
        return self.proj(self.post(x[:, 0]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="imagebind-huge")
    ap.add_argument("--dtype", choices=["bf16", "f32", "dynamic-int8"], default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = ARCHS[a.arch]
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    model = Vit(*cfg).eval().to(dtype)
    if a.dtype == "dynamic-int8":
        model = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    pixels = torch.randn(1, 3, cfg[0], cfg[0]).to(dtype)
    times = []
    with torch.inference_mode():
        model(pixels)  # warm-up
        for _ in range(a.iters):
            t = time.perf_counter()
            model(pixels)
            times.append(time.perf_counter() - t)
    times.sort()
    print(f"pytorch {torch.__version__} {a.arch} {a.dtype} {a.threads} threads: "
          f"best {times[0] * 1e3:.0f} ms, median {times[len(times) // 2] * 1e3:.0f} ms/image over {a.iters}")


if __name__ == "__main__":
    main()
