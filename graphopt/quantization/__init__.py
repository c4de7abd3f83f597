"""Quantization building blocks used by the `quantize` pass.

params     scale / zero-point math, weight (per-tensor, per-channel, int4 block-wise) and
           int32 bias quantization
placement  which nodes run in integer kernels and which tensors need Q/DQ
rewrite    inserting QuantizeLinear/DequantizeLinear (static, weight-only) and the
           DynamicQuantizeLinear + MatMulInteger form (dynamic)
mixed      mixed precision: keep the most sensitive layers in float until a cosine target
"""
