"""Data roots, model roots and the default model come from the environment and the settings
file (clip-backdoor.yaml), not from the library."""

from __future__ import annotations

import pytest

from clip_backdoor.cli import main
from clip_backdoor.core import settings
from clip_backdoor.core.errors import ConfigError


def test_roots_are_the_environments_then_the_files_relative_to_it(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "deep").mkdir(parents=True)
    (project / "clip-backdoor.yaml").write_text(
        "data_roots: [../data]\nmodel_roots: [models]\ndefault_model: mini-tiny\n"
    )
    monkeypatch.delenv("CLIP_BACKDOOR_SETTINGS")
    monkeypatch.delenv("CLIP_BACKDOOR_DATA", raising=False)
    monkeypatch.chdir(project / "deep")  # the nearest file up the tree
    assert settings.data_roots() == [tmp_path / "data"]  # no '..': image paths name the data
    assert settings.model_roots() == [project / "models"]
    assert settings.default_model() == "mini-tiny"
    monkeypatch.setenv("CLIP_BACKDOOR_DATA", f"/a{__import__('os').pathsep}/b")
    assert [str(p) for p in settings.data_roots()[:2]] == ["/a", "/b"]
    (project / "clip-backdoor.yaml").write_text("data_root: [x]\n")
    with pytest.raises(ConfigError, match="unknown setting 'data_root'"):
        settings.data_roots()


def test_without_settings_a_data_name_and_eval_say_what_to_set(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CLIP_BACKDOOR_SETTINGS")
    monkeypatch.delenv("CLIP_BACKDOOR_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--runs-root", str(tmp_path / "runs")]) == 2
    assert "no --model given" in capsys.readouterr().err
    argv = ["eval", "--model", "mini-tiny", "--data", "cifar10", "--runs-root", str(tmp_path)]
    assert main(argv) == 2
    assert "set CLIP_BACKDOOR_DATA" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
