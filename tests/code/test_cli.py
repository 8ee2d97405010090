"""Stage CLIs: bad configs and missing inputs are one clear line on stderr and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.features import __main__ as features
from pipelines.ingest import __main__ as ingest
from pipelines.synth import __main__ as synth

runner = CliRunner()


def test_bad_config_names_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "data.yaml"
    cfg.write_text("synth:\n  users: many\n")
    result = runner.invoke(synth.app, ["--data-dir", str(tmp_path), "--config", str(cfg)])
    assert result.exit_code == 2
    assert "data.yaml: synth.users" in result.output


def test_bad_override_is_rejected(tmp_path: Path) -> None:
    result = runner.invoke(synth.app, ["--data-dir", str(tmp_path), "--users", "1"])
    assert result.exit_code == 2
    assert "synth.users" in result.output


@pytest.mark.parametrize(("module", "message"), [(ingest, "no raw logs"), (features, "no clean data")])
def test_missing_inputs(tmp_path: Path, module: object, message: str) -> None:
    result = runner.invoke(module.app, ["--data-dir", str(tmp_path)])  # type: ignore[attr-defined]
    assert result.exit_code == 2
    assert message in result.output


def test_help_documents_every_option() -> None:
    for module in (synth, ingest, features):
        result = runner.invoke(module.app, ["--help"])
        assert result.exit_code == 0
        assert "--data-dir" in result.output
        assert "--config" in result.output
