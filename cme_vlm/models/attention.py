"""Two attention functions registered with transformers' ``AttentionInterface``, used wherever it would run SDPA.

- ``GROUPED_DECODE`` (the language model): a one-token query with grouped key/value heads runs as
  ``[B, H_kv, G, D]`` queries against the ``H_kv`` cached heads, so the keys and values are read once.
  transformers' SDPA path does that in eager mode only; under ``torch.compile`` (the compiled decode
  step) it copies the cache ``G`` times (``repeat_kv``), and with a static cache it cannot use SDPA's
  own ``enable_gqa``, which it allows only without a mask. Everything else goes to transformers' SDPA.
- ``PACKED_WINDOWS`` (vision towers whose attention takes ``cu_seqlens``: Qwen2-VL, Qwen2.5-VL, Qwen3-VL):
  all windows (or images) of a layer in one call. transformers gives such a function the window
  boundaries and the longest window once per forward; other implementations get one SDPA call per
  window after a ``.tolist()`` host sync in every layer. On CUDA (bf16/fp16) the call is torch's
  ``varlen_attn`` (flash/cuDNN kernels); elsewhere the windows are gathered into a padded
  ``[W, H, L, D]`` batch with a key mask and run as one SDPA call.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

try:  # torch >= 2.10
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older torch: the padded path everywhere
    varlen_attn = None

GROUPED_DECODE = "cme_sdpa_grouped_decode"
# transformers passes cu_seqlens only to implementations whose name contains "flash"
PACKED_WINDOWS = "cme_flash_packed_windows"


def grouped_decode_attention(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
    dropout: float = 0.0, scaling: float | None = None, **kwargs: Any,
) -> tuple[Tensor, None]:
    """``query: [B, H, 1, D]``, ``key, value: [B, H_kv, K, D]``, ``attention_mask: [B, 1, 1, K]`` or None -> ``[B, 1, H, D]``.

    Query head ``h`` reads key/value head ``h // G`` (``G = H / H_kv``), as transformers' ``repeat_kv``
    lays them out; here the ``G`` query heads of a group are the ``G`` query positions of one call.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    shared_mask = attention_mask is None or attention_mask.shape[1] == 1
    extras = kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
    if query.shape[2] != 1 or groups == 1 or not shared_mask or extras:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, _, dim = query.shape
    grouped = query.reshape(batch, key.shape[1], groups, dim)
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling)
    return out.reshape(batch, 1, heads, dim), None


def packed_windows_attention(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None = None,
    dropout: float = 0.0, scaling: float | None = None, cu_seq_lens_q: Tensor | None = None,
    max_length_q: int | None = None, **kwargs: Any,
) -> tuple[Tensor, None]:
    """``query, key, value: [1, H, S, D]`` (every window's tokens end to end), ``cu_seq_lens_q: [W + 1]``
    window boundaries, ``max_length_q`` the longest window -> ``[1, S, H, D]``; no token attends outside its window."""
    if cu_seq_lens_q is None:  # not a packed call: plain SDPA
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    longest = int(max_length_q) if max_length_q is not None else int(cu_seq_lens_q.diff().max())
    if _varlen_fits(query, dropout, scaling):
        tokens = [t[0].transpose(0, 1) for t in (query, key, value)]  # [S, H, D]
        out = varlen_attn(*tokens, cu_seq_lens_q, cu_seq_lens_q, longest, longest)
        return out.unsqueeze(0), None
    return _padded_windows(query, key, value, cu_seq_lens_q, longest, dropout, scaling), None


def _varlen_fits(query: Tensor, dropout: float, scaling: float | None) -> bool:
    """torch's varlen kernels: CUDA, half precision, no dropout, the default scale (older torch takes no other)."""
    default_scale = scaling is None or abs(scaling * query.shape[-1] ** 0.5 - 1) < 1e-6
    return (varlen_attn is not None and query.is_cuda and query.dtype in (torch.bfloat16, torch.float16)
            and dropout == 0.0 and default_scale)


def _padded_windows(query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor, longest: int,
                    dropout: float, scaling: float | None) -> Tensor:
    """The ``W`` windows as one padded batch ``[W, H, longest, D]``, padding keys masked out; back to ``[1, S, H, D]``."""
    length = query.shape[2]
    starts, ends = cu_seqlens[:-1].long(), cu_seqlens[1:].long()
    slots = starts[:, None] + torch.arange(longest, device=query.device)  # [W, L] token index of each slot
    valid = slots < ends[:, None]
    slots = slots.clamp_max(length - 1)

    def windows(x: Tensor) -> Tensor:
        return x[0][:, slots].transpose(0, 1)  # [H, W, L, D] -> [W, H, L, D]

    out = F.scaled_dot_product_attention(windows(query), windows(key), windows(value), attn_mask=valid[:, None, None],
                                         dropout_p=dropout, scale=scaling)
    token = torch.arange(length, device=query.device)
    window = torch.bucketize(token, ends, right=True)  # [S] the window of each token
    return out[window, :, token - starts[window]].unsqueeze(0)  # [S, H, D] -> [1, S, H, D]


AttentionInterface.register(GROUPED_DECODE, grouped_decode_attention)
AttentionMaskInterface.register(GROUPED_DECODE, sdpa_mask)
AttentionInterface.register(PACKED_WINDOWS, packed_windows_attention)


def _takes_cu_seqlens(vision: nn.Module) -> bool:
    """Whether the tower's attention layers take packed windows (``cu_seqlens``), the contract ``PACKED_WINDOWS`` serves."""
    for module in vision.modules():
        if "Attention" in type(module).__name__ and "cu_seqlens" in inspect.signature(module.forward).parameters:
            return True
    return False


def use_fast_attention(model: PreTrainedModel) -> PreTrainedModel:
    """Switch a model configured for ``sdpa`` to the two functions above (other implementations are kept)."""
    config = model.config
    choice: dict[str, str] = {}
    text, vision = getattr(config, "text_config", None), getattr(config, "vision_config", None)
    if text is not None and text._attn_implementation == "sdpa":
        choice["text_config"] = GROUPED_DECODE
    towers = [m for m in model.modules() if isinstance(m, PreTrainedModel) and m.config is vision]
    if vision is not None and vision._attn_implementation == "sdpa" and towers and _takes_cu_seqlens(towers[0]):
        choice["vision_config"] = PACKED_WINDOWS
    if choice:
        model.set_attn_implementation(choice)
    return model
