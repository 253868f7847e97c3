"""What a model becomes to translate on the CPU: the same function, in layouts and kernels that are
faster there. Training never sees these; `Translator.from_dir` applies them to the model it loads.

- `prepare_for_cpu` (fp32): a search step's linear layers become `PackedLinear`s, which multiply with
  oneDNN from a weight laid out once for its kernels; the other weights are held transposed. With
  `bf16`, those layers multiply in bfloat16 (AMX or AVX512-BF16) and return fp32.
- `quantize_int8`: dynamic int8 quantization of the linear layers and RNNs.

Both take a model whose decoder already holds its embedding table in fp32 (`Translator.from_dir`
makes it first), so the embedding's terms in search are never quantized.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from mt.model import Seq2Seq

RECURRENT = (nn.GRU, nn.LSTM, nn.GRUCell, nn.LSTMCell)
# Layers applied at every source position: their inputs take a new shape with each batch's source length
# (and the energy layer's with every step's rows too), and oneDNN compiles a kernel per shape, so they
# stay with MKL. Translating Multi30k test, they made 185 of the 440 shapes oneDNN saw; 100 random batches
# of 1-32 sentences, 659 of 819.
PER_SOURCE_POSITION = ("decoder.attention.key_layer", "decoder.context_proj", "decoder.attention.energy_layer")
ONEDNN_CACHE_ENTRIES = 256  # kernels kept per cache, for the input shapes last used


def bound_onednn_caches() -> None:
    """Keep at most ONEDNN_CACHE_ENTRIES kernels in each of oneDNN's caches (its own and PyTorch's ideep
    layer's), unless the environment already sets ONEDNN_PRIMITIVE_CACHE_CAPACITY or LRU_CACHE_CAPACITY.

    oneDNN compiles a kernel per input shape and keeps 1,024 of them by default. A search step's rows
    change with every sentence that finishes, so a server's memory grew with them: models/de-en with
    every linear layer packed, translating 300 random batches of 1-32 sentences, went from 369 to 1,050
    MiB, against 437 MiB with MKL alone. With the layers of PER_SOURCE_POSITION left to MKL and 256
    entries, it held 687-713 MiB after the test set twice and 230 random batches; with 64 entries and
    every layer packed, 482-497, but the cache thrashed (a kernel takes about 0.5 ms to make) and random
    batches of 20 ran at 89-107 sentences/s against 109-117. The setting counts only before the
    process's first oneDNN operation.
    """
    for variable in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(variable, str(ONEDNN_CACHE_ENTRIES))


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's linear kernels (x86 and Arm builds of PyTorch do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache  # the CPU does not change under a process
def bf16_supported() -> bool:
    """Whether oneDNN multiplies bfloat16 natively on this CPU: with AMX or AVX512-BF16 (or Arm's BF16).
    oneDNN also runs bfloat16 on other AVX-512 CPUs, by emulation, slower than fp32."""
    if not (onednn_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: oneDNN's word
        return True
    flags = {flag for line in cpuinfo.splitlines() if line.startswith(("flags", "Features")) for flag in line.split()}
    return bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})


def require_bf16() -> None:
    """Refuse bf16 inference on a CPU that would only emulate it."""
    if not bf16_supported():
        raise ValueError("bf16 inference on a CPU needs AMX or AVX512-BF16, which this one lacks: leave out bf16")


class PackedLinear(nn.Module):
    """`nn.Linear` for inference: the same x W^T + b, computed by oneDNN from a weight it has reordered
    once into the blocked layout of its own kernels (what `torch.compile` does to frozen CPU linears).

    A plain CPU `nn.Linear` calls MKL's sgemm, which takes a slower path on processors that are not
    Intel's. On this project's 2-core AMD EPYC, at the rows of a search step (median µs): the output
    layer, 256 -> 6000 at 320 rows, 6,870 with MKL against 4,772; the GRU's 512 -> 1536 at 5 rows 172
    against 68, at 16 rows 256 against 138. Results agree with `nn.Linear` up to the order of float
    additions.

    With `dtype=torch.bfloat16` the weight and bias are stored and multiplied in bfloat16: the input is
    rounded to it and so is the output, which comes back as fp32 holding bfloat16 values (oneDNN's bf16
    linear returns bf16). On an Intel Xeon with AMX, 256 -> 6000 at 160 rows took 390 µs against 1,534 in
    fp32. Its kernels also round differently with the number of rows, so in bf16 a sentence's translation
    can depend on the batch it is in (8 of the 1,000 test sentences of models/de-en, alone against in
    batches of 64, 2 threads; none in fp32).
    """

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.in_features, self.out_features, self.dtype = linear.in_features, linear.out_features, dtype
        weight = linear.weight.detach().to(dtype).contiguous()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, None)  # opaque: not a Parameter
        self.bias = None if linear.bias is None else linear.bias.detach().to(dtype).clone()

    def forward(self, x: Tensor) -> Tensor:
        output: Tensor = torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.weight, self.bias, "none", [], "")
        return output.float()  # both no-ops in fp32

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}, dtype={self.dtype}"


def pack_linear_layers(
    model: nn.Module, *, skip: tuple[str, ...] = (), dtype: torch.dtype = torch.float32
) -> nn.Module:
    """Replace each `nn.Linear` of `model` not named in `skip` by a `PackedLinear` of `dtype` (nothing
    changes without oneDNN). A tied output layer gets its own packed copy of the embedding's weight."""
    if not onednn_available():
        return model
    bound_onednn_caches()
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and f"{parent_name}.{name}".lstrip(".") not in skip:
                setattr(parent, name, PackedLinear(child, dtype))
    return model


def prepare_for_cpu(model: Seq2Seq, *, bf16: bool = False) -> Seq2Seq:
    """Inference on the CPU: the linear layers of a search step packed for oneDNN, in fp32 or, with
    `bf16`, in bfloat16; the weights of the others (PER_SOURCE_POSITION) and of the RNNs (which go
    through MKL inside `nn.GRU`/`nn.LSTM` and their cells) stay fp32, laid out in memory as their
    transposes.

    PyTorch computes x W^T from W as stored, row-major (out, in): the "NT" case of sgemm, which on an
    Intel Xeon ran 1.2-2.6x slower at 5-50 rows than the "NN" case of a W^T stored row-major (the
    encoder GRU's 1536 x 512 recurrence at 16 rows: 450 against 170 µs); on an AMD EPYC the two
    cases ran alike (256 against 259 µs), and at one row 71 against 57 µs.
    """
    if bf16:
        require_bf16()
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if type(module) in RECURRENT or module_name in PER_SOURCE_POSITION:
                for name, weight in module.named_parameters(recurse=False):
                    if name.startswith("weight"):
                        weight.data = weight.data.t().contiguous().t()
    pack_linear_layers(model, skip=PER_SOURCE_POSITION, dtype=torch.bfloat16 if bf16 else torch.float32)
    return model


def quantize_int8(model: Seq2Seq) -> Seq2Seq:
    """Dynamic int8 quantization of the linear layers and RNNs for CPU inference: weights are stored
    in int8, activations quantized on the fly per batch. Embeddings and attention scores stay fp32.

    Linear layers get a scale per output row, as they are in Marian's and CTranslate2's int8. The
    attention's energy layer v stays an fp32 `nn.Linear`: it maps each (hypothesis, source
    position) to one number, and in int8 it quantized a (rows, src_len, attn_size) activation for a
    matrix-vector product at every step, 12% of int8 beam search (Multi30k test in random batches of
    16, 2 cores). On Multi30k validation (models/de-en, beam 5) this kept 91.2% of translations
    identical to fp32's (before the embedding table), against 90.3% with one scale per layer and v in
    int8. (Packing v for oneDNN did not pay here: 242.5 and 258.8 sentences/s against 256.4 and 260.6
    unpacked, AMD EPYC.)
    """
    spec: dict[type[nn.Module] | str, object] = {
        nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig,
        "decoder.attention.energy_layer": None,
    }
    for recurrent in RECURRENT:
        spec[recurrent] = torch.ao.quantization.default_dynamic_qconfig
    with warnings.catch_warnings():  # torch.ao's eager-mode API is deprecated in favour of torchao, which
        warnings.simplefilter("ignore")  # has no int8 GRU/LSTM cells; it still works in the torch we pin
        quantized = torch.ao.quantization.quantize_dynamic(model.float().eval(), spec, dtype=torch.qint8)
    assert isinstance(quantized, Seq2Seq)
    return quantized
