#!/usr/bin/env python3
"""Writes a LLaMA-architecture GGUF (version 3) with random weights, in BF16, Q8_0 or Q4_0, for
timing llama.cpp beside `iadgpt bench llm --arch A --quant none|q8|q4` on the same shape.

Standard library only. Written from the GGUF format description (header, key-value metadata,
tensor infos, 32-byte-aligned data); no llama.cpp code. Every matrix, including the token
embedding, is in the chosen format, except that a Q4_0 file keeps the output head in Q8_0, as
`bench llm --quant q4` does (llama-quantize would choose Q6_K there); the norms are F32 ones. The values are random but harmless: bf16 N(0, 0.02), and blocks with a 0.002 scale.
"""
import argparse
import os
import random
import struct

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocabulary (as `bench llm --arch`)
    "tinyllama-1.1b": (2048, 5632, 22, 32, 4, 32000),
    "llama-7b": (4096, 11008, 32, 32, 32, 32000),
}
# ggml tensor types and llama file types (general.file_type) of each format.
GGML_TYPE = {"bf16": 30, "q8_0": 8, "q4_0": 2}
FILE_TYPE = {"bf16": 32, "q8_0": 7, "q4_0": 2}
GGML_F32 = 0
# Bytes per unit: one bf16 value, or one block of 32 weights (fp16 scale + 32 int8 / 16 bytes of nibbles).
UNIT_BYTES = {"bf16": 2, "q8_0": 34, "q4_0": 18}
UNIT_WEIGHTS = {"bf16": 1, "q8_0": 32, "q4_0": 32}
ALIGN = 32
T_U32, T_I32, T_F32, T_STRING, T_ARRAY = 4, 5, 6, 8, 9


def gguf_string(s):
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def kv(key, value_type, payload):
    return gguf_string(key) + struct.pack("<I", value_type) + payload


def kv_u32(key, v):
    return kv(key, T_U32, struct.pack("<I", v))


def kv_f32(key, v):
    return kv(key, T_F32, struct.pack("<f", v))


def kv_string(key, v):
    return kv(key, T_STRING, gguf_string(v))


def kv_array(key, element_type, items, pack):
    return kv(key, T_ARRAY, struct.pack("<IQ", element_type, len(items)) + b"".join(pack(x) for x in items))


def metadata(arch, fmt):
    hidden, inter, layers, heads, kv_heads, vocab = SHAPES[arch]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"t{i}" for i in range(vocab - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (vocab - 259)  # unknown, control, byte, normal
    return [
        kv_string("general.architecture", "llama"), kv_string("general.name", f"random {arch}"),
        kv_u32("general.file_type", FILE_TYPE[fmt]), kv_u32("general.quantization_version", 2),
        kv_u32("llama.context_length", 2048), kv_u32("llama.embedding_length", hidden),
        kv_u32("llama.block_count", layers), kv_u32("llama.feed_forward_length", inter),
        kv_u32("llama.attention.head_count", heads), kv_u32("llama.attention.head_count_kv", kv_heads),
        kv_u32("llama.rope.dimension_count", hidden // heads),
        kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5), kv_f32("llama.rope.freq_base", 10000.0),
        kv_string("tokenizer.ggml.model", "llama"),
        kv_array("tokenizer.ggml.tokens", T_STRING, tokens, gguf_string),
        kv_array("tokenizer.ggml.scores", T_F32, [-float(i) for i in range(vocab)], lambda x: struct.pack("<f", x)),
        kv_array("tokenizer.ggml.token_type", T_I32, types, lambda x: struct.pack("<i", x)),
        kv_u32("tokenizer.ggml.bos_token_id", 1), kv_u32("tokenizer.ggml.eos_token_id", 2),
        kv_u32("tokenizer.ggml.unknown_token_id", 0),
    ]


def tensors(arch, fmt):
    """(name, dims with the row length first as GGUF stores them, ggml type, bytes)."""
    hidden, inter, layers, heads, kv_heads, vocab = SHAPES[arch]
    kv_width = kv_heads * (hidden // heads)
    matrices = [("token_embd.weight", hidden, vocab)]
    for i in range(layers):
        p = f"blk.{i}."
        matrices += [(p + "attn_q.weight", hidden, hidden), (p + "attn_k.weight", hidden, kv_width),
                     (p + "attn_v.weight", hidden, kv_width), (p + "attn_output.weight", hidden, hidden),
                     (p + "ffn_gate.weight", hidden, inter), (p + "ffn_up.weight", hidden, inter),
                     (p + "ffn_down.weight", inter, hidden)]
    out = [(n, (cols, rows), GGML_TYPE[fmt], rows * cols // UNIT_WEIGHTS[fmt] * UNIT_BYTES[fmt])
           for n, cols, rows in matrices]
    head = "q8_0" if fmt == "q4_0" else fmt
    out.append(("output.weight", (hidden, vocab), GGML_TYPE[head], vocab * hidden // UNIT_WEIGHTS[head] * UNIT_BYTES[head]))
    norms = ["output_norm.weight"] + [f"blk.{i}.{n}" for i in range(layers) for n in ("attn_norm.weight", "ffn_norm.weight")]
    return out + [(n, (hidden,), GGML_F32, 4 * hidden) for n in norms]


def unit_pool(fmt, rng, units=1 << 16):
    """`units` valid values or blocks of `fmt`, drawn from a few thousand random ones."""
    if fmt == "bf16":
        values = [struct.pack("<f", rng.gauss(0.0, 0.02))[2:4] for _ in range(4096)]
    else:
        scale = struct.pack("<e", 0.002)
        values = [scale + bytes(rng.getrandbits(8) for _ in range(UNIT_BYTES[fmt] - 2)) for _ in range(256)]
    return b"".join(rng.choice(values) for _ in range(units))


def write(path, arch, fmt, seed=0):
    infos, offset = [], 0
    table = tensors(arch, fmt)
    for name, dims, ggml_type, nbytes in table:
        infos.append(gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) +
                     struct.pack("<IQ", ggml_type, offset))
        offset += -(-nbytes // ALIGN) * ALIGN
    meta = metadata(arch, fmt)
    header = b"GGUF" + struct.pack("<IQQ", 3, len(table), len(meta)) + b"".join(meta) + b"".join(infos)
    rng = random.Random(seed)
    pools = {GGML_TYPE[f]: (unit_pool(f, rng), UNIT_BYTES[f]) for f in {fmt, "q8_0" if fmt == "q4_0" else fmt}}
    with open(path, "wb") as f:
        f.write(header + bytes(-len(header) % ALIGN))
        for _, _, ggml_type, nbytes in table:
            if ggml_type == GGML_F32:
                f.write(struct.pack("<f", 1.0) * (nbytes // 4))
            left = nbytes if ggml_type != GGML_F32 else 0
            while left > 0:  # the pool from a random whole-unit start, so matrices differ
                pool, unit = pools[ggml_type]
                chunk = pool[rng.randrange(0, 64) * unit:][:left]
                f.write(chunk)
                left -= len(chunk)
            f.write(bytes(-nbytes % ALIGN))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(SHAPES), default="tinyllama-1.1b")
    ap.add_argument("--format", choices=sorted(GGML_TYPE), default="bf16")
    ap.add_argument("--out", required=True, help="the .gguf file to write")
    args = ap.parse_args()
    write(args.out, args.arch, args.format)
    print(f"{args.out}: {os.path.getsize(args.out) / 1e9:.2f} GB, {args.arch} {args.format}")


if __name__ == "__main__":
    main()
