"""The two attention functions: the vision tower's windows in one call per layer, decode reading each KV head once."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from op_counts import CountingHostReads, CountingOps
from PIL import Image
from torch._subclasses.fake_tensor import FakeTensorMode

from cme_vlm.models.attention import (
    GROUPED_DECODE,
    PACKED_WINDOWS,
    grouped_decode_attention,
    packed_windows_attention,
    use_fast_attention,
)

# 8x8 and 8x6 patch grids: windows of 16 patches, and of 8 where the second image's grid does not fill one
IMAGES = [Image.new("RGB", (112, 112), (0, 200, 0)), Image.new("RGB", (140, 196), (9, 9, 200))]


def towers(loaded, depth: int = 2):
    """Ours and the stock SDPA tower of the tiny model (``depth`` blocks), both float64, same weights."""
    config = copy.deepcopy(loaded.model.config)
    config._attn_implementation = "sdpa"  # transformers' constructor accepts no flash-named function it cannot import
    config.vision_config.depth = depth
    config.vision_config.fullatt_block_indexes = [depth - 1]
    torch.manual_seed(0)
    ours = use_fast_attention(type(loaded.model)(config).double().eval())
    stock = copy.deepcopy(ours)
    stock.set_attn_implementation("sdpa")
    return ours.model.visual, stock.model.visual


def image_inputs(loaded):
    inputs = loaded.processor.image_processor(images=IMAGES, return_tensors="pt")
    return torch.randn_like(inputs["pixel_values"].double()), inputs["image_grid_thw"]


def counted_sdpa():
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    return calls, mock.patch.object(F, "scaled_dot_product_attention", counting)


def test_loaded_models_use_both_functions(tiny_loaded):
    config = tiny_loaded.model.config
    assert (config.text_config._attn_implementation, config.vision_config._attn_implementation) == (
        GROUPED_DECODE, PACKED_WINDOWS)


def test_windows_in_one_call_equal_the_stock_tower_with_gradients(tiny_loaded):
    ours, stock = towers(tiny_loaded)
    pixels, grid = image_inputs(tiny_loaded)
    a, b = pixels.clone().requires_grad_(), pixels.clone().requires_grad_()
    out_ours, out_stock = ours(a, grid_thw=grid).pooler_output, stock(b, grid_thw=grid).pooler_output
    torch.testing.assert_close(out_ours, out_stock, rtol=1e-12, atol=1e-12)
    out_ours.pow(2).sum().backward()
    out_stock.pow(2).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_one_attention_call_per_layer_and_no_host_read_per_layer(tiny_loaded):
    """The trap: one SDPA call per window (~1,800 a forward for 4 images on the 7B) and a ``.tolist()`` in every layer."""
    pixels, grid = image_inputs(tiny_loaded)
    seen = {}
    for depth in (2, 4):
        for name, tower in zip(("ours", "stock"), towers(tiny_loaded, depth)):
            calls, patch = counted_sdpa()
            with patch, CountingHostReads() as reads, torch.no_grad():
                tower(pixels, grid_thw=grid)
            seen[name, depth] = (len(calls), reads.count)
    assert seen["ours", 2][0] == 2 and seen["ours", 4][0] == 4  # one call per layer
    assert seen["ours", 4][1] == seen["ours", 2][1]  # host reads per forward, none per layer
    assert seen["stock", 4][0] > 4 and seen["stock", 4][1] > seen["stock", 2][1]  # what the test would see without it


def test_on_cuda_the_windows_go_to_torch_varlen_kernel():
    """The CUDA branch, on fake CUDA tensors: one ``varlen_attn`` call over the packed windows, shapes kept."""
    with FakeTensorMode(allow_non_fake_inputs=True), CountingOps("_varlen_attn", "scaled_dot_product_attention") as ops:
        q = torch.empty(1, 16, 4 * 64, 80, device="cuda", dtype=torch.bfloat16)
        cu = torch.arange(0, 4 * 64 + 1, 64, dtype=torch.int32, device="cuda")
        out, _ = packed_windows_attention(None, q, q, q, cu_seq_lens_q=cu, max_length_q=64, scaling=80**-0.5)
        assert out.shape == (1, 4 * 64, 16, 80) and out.device.type == "cuda"
    assert ops.count == 1


class Grouped(torch.nn.Module):
    num_key_value_groups = 3


@pytest.mark.parametrize("masked", [True, False])
def test_grouped_decode_equals_repeated_heads(masked):
    torch.manual_seed(0)
    query, key, value = torch.randn(2, 6, 1, 8), torch.randn(2, 2, 10, 8), torch.randn(2, 2, 10, 8)
    mask = (torch.arange(10) < torch.tensor([[7], [10]]))[:, None, None] if masked else None
    out, _ = grouped_decode_attention(Grouped(), query, key, value, mask, scaling=0.3)
    repeated = F.scaled_dot_product_attention(query, key.repeat_interleave(3, 1), value.repeat_interleave(3, 1),
                                              attn_mask=mask, scale=0.3)
    torch.testing.assert_close(out, repeated.transpose(1, 2))
