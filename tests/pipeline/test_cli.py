"""The error boundary every ``python -m pipeline.<command>`` shares."""

from __future__ import annotations

import errno
import os

import pytest

from models import CheckpointFormatError
from pipeline.cli import EXIT_FAILED, guarded
from pipeline.config.errors import CatalogError


def _raises(exc: BaseException):
    def body() -> int:
        raise exc

    return body


def test_a_full_disk_is_one_line_naming_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    exc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/scene.zarr/hs/c/0/0")
    assert guarded(_raises(exc)) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: /data/out/scene.zarr/hs/c/0/0: No space left on device "
        "(free some space or point output.folder / --output at another disk)"]


@pytest.mark.parametrize("exc", [
    CatalogError("/c.yaml", "model.params.lora_rnak", "a parameter of mamol"),
    CheckpointFormatError("/ckpt", "model.safetensors is missing"),
    PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/out/report.json"),
], ids=["pipeline", "models", "permission"])
def test_anticipated_failures_are_one_error_line(exc: BaseException, capsys: pytest.CaptureFixture[str]) -> None:
    assert guarded(_raises(exc)) == EXIT_FAILED
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err


def test_an_unexpected_failure_prints_its_traceback_and_says_it_is_a_bug(capsys: pytest.CaptureFixture[str]) -> None:
    assert guarded(_raises(ZeroDivisionError("division by zero"))) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "ZeroDivisionError: division by zero" in err
    assert err.splitlines()[-1] == ("error: an unexpected failure (a bug in the pipeline): "
                                    "please report it with the traceback above")
