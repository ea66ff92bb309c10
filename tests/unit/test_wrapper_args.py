"""Wrapper argument unpacking and the settings helpers (pure Python)."""

from dataclasses import dataclass

import pytest

from comfyui_videoedit.attention.unet_blocks import parse_block_list
from comfyui_videoedit.attention.wrapper_args import diffusion_model_args
from comfyui_videoedit.options import Options, option


def _executor(*args, **kwargs):
    return args, kwargs


@pytest.mark.parametrize(
    "args, kwargs",
    [
        (("x", "t", "ctx", None, None, {"a": 1}), {"extra": 2}),
        (("x", "t"), {"context": "ctx", "transformer_options": {"a": 1}, "extra": 2}),
        (("x",), {"timesteps": "t", "context": "ctx", "transformer_options": {"a": 1}, "extra": 2}),
    ],
)
def test_wrapper_args_read_by_name_and_pass_everything_through(args, kwargs):
    call = diffusion_model_args(args, kwargs)
    assert (call["x"], call["timesteps"], call["context"], call["y"]) == ("x", "t", "ctx", None)
    assert call.transformer_options == {"a": 1}
    out_args, out_kwargs = call.call(_executor, x="x2", transformer_options={"b": 2})
    assert out_args == ("x2", "t", "ctx", None, None, {"b": 2}) and out_kwargs == {"extra": 2}


def test_wrapper_args_keep_positional_arguments_past_the_known_ones():
    call = diffusion_model_args(("x", "t", "c", "y", "ctl", {}, "new"), {})
    assert call.call(_executor) == (("x", "t", "c", "y", "ctl", {}, "new"), {})


@dataclass(frozen=True)
class _Demo(Options):
    steps: int = option(20, min=1, max=100)
    mode: str = option("fast", choices=("fast", "exact"))
    name: str = "x"


def test_options_from_inputs_checks_ids_ranges_and_names():
    assert _Demo.from_inputs() == _Demo() and _Demo.from_inputs(mode="exact").mode == "exact"
    with pytest.raises(ValueError, match="^mode: 'fast-default' is not one of fast, exact$"):
        _Demo.from_inputs(mode="fast-default")
    with pytest.raises(ValueError, match="steps: 0 is outside 1..100"):
        _Demo.from_inputs(steps=0)
    with pytest.raises(ValueError, match="unknown option"):
        _Demo.from_inputs(stepz=3)
    assert _Demo.spec("steps") == {"default": 20, "min": 1, "max": 100}
    assert _Demo.spec("mode") == {"default": "fast", "options": ["fast", "exact"]}


def test_one_block_grammar_for_attention_layers_and_resblocks():
    attn = [("input", 1, 0), ("input", 2, 0), ("middle", 0, 0), ("output", 3, 0), ("output", 4, 0)]
    res = [("input", 1), ("output", 3), ("output", 4)]
    assert parse_block_list("output 3-4", attn) == [("output", 3, 0), ("output", 4, 0)]
    assert parse_block_list("input 1; output 4", res) == [("input", 1), ("output", 4)]
    assert parse_block_list("decoder", attn) == [("output", 3, 0), ("output", 4, 0)]
    assert parse_block_list("none", res) == [] and parse_block_list("all", res) == res
    with pytest.raises(ValueError, match=r"no output_blocks\[7\] with a ResBlock; it has \[\('input', 1\)"):
        parse_block_list("output 7", res, what="a ResBlock")
    with pytest.raises(ValueError, match="'output x' is not like 'output 3'"):
        parse_block_list("output x", res, example="output 3")
