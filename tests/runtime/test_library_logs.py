"""bitsandbytes' log records: one line for a message logged on every call, none for notices that
say nothing a user can act on, and never on stdout (pipeline/runtime/library_logs.py)."""

from __future__ import annotations

import logging

import pytest
import torch

from pipeline.runtime.library_logs import route_library_logs

CAST = "MatMul8bitLt: inputs will be cast from"


@pytest.fixture(autouse=True)
def routed():
    route_library_logs(debug=False)
    yield
    route_library_logs(debug=False)


def test_an_8bit_linear_called_many_times_logs_its_cast_warning_once(capsys) -> None:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear8bitLt(16, 8, has_fp16_weights=False)
    layer.load_state_dict({"weight": torch.randn(8, 16), "bias": torch.zeros(8)}, strict=False)
    layer.eval()  # inference takes MatMul8bitLt on CPU too, the path every GPU forward takes
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        for _ in range(200):
            layer(x)
    out, err = capsys.readouterr()
    assert out == ""
    lines = [line for line in err.splitlines() if CAST in line]
    assert lines == [f"[bitsandbytes] warning: {CAST} torch.bfloat16 to float16 during quantization"]
    # the logger now stops at isEnabledFor: no record is built per matmul
    assert not logging.getLogger("bitsandbytes.autograd._functions").isEnabledFor(logging.WARNING)


def test_a_new_routing_shows_the_once_message_once_again(capsys) -> None:
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    for _ in range(3):
        logger.warning("%s torch.bfloat16 to float16 during quantization", CAST)
    route_library_logs(debug=False)
    for _ in range(3):
        logger.warning("%s torch.bfloat16 to float16 during quantization", CAST)
    assert sum(CAST in line for line in capsys.readouterr().err.splitlines()) == 2


def test_the_offline_kernels_community_notice_is_shown_only_with_debug(capsys) -> None:
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    notice = ("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
              "`pip install kernels` and the kernels >= 0.11.1")
    logger.warning(notice, "offline mode is enabled")
    logger.warning("a bitsandbytes problem a user should see")
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == ["[bitsandbytes] warning: a bitsandbytes problem a user should see"]
    route_library_logs(debug=True)
    logger.warning(notice, "offline mode is enabled")
    assert capsys.readouterr().err.startswith("[bitsandbytes] info: Failed to load CPU gemm_4bit_forward")
