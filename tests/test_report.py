"""The HTML report (issue 28): sections, embedded figures, provenance links, headless render."""

from __future__ import annotations

import base64
import copy
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_poisoning import RECIPE as POISON_RECIPE
from test_poisoning import TRAINING

from clip_backdoor.core.errors import UserError
from clip_backdoor.pipeline.recipes import parse_recipe
from clip_backdoor.pipeline.runner import run_recipe
from clip_backdoor.reports.html import write_report


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_attack_cache, tiny_poisoning):
    """A tiny BadNet attack, FT after it and STRIP beside it: one run with every section."""
    root = tmp_path_factory.mktemp("report_runs")
    data = copy.deepcopy(POISON_RECIPE)
    data["runs_root"] = str(root / "runs")
    data["evaluation"]["quality"] = False
    data["stages"] += [
        {
            "kind": "detection",
            "method": "strip",
            "evaluate": False,
            "params": {"images": 40, "blends": 16},
        },
        {
            "kind": "defense",
            "method": "ft",
            "label": "ft",
            "params": {
                "data": [
                    {"name": "synthetic", "split": "train", "size": 480, "templates": "simple"}
                ],
                "fraction": 0.2,
                "training": {**TRAINING, "steps": 20},
            },
        },
    ]
    with pytest.MonkeyPatch.context() as patch:  # a module fixture runs before the autouse one
        patch.setenv("CLIP_BACKDOOR_CACHE", tiny_attack_cache)
        return run_recipe(parse_recipe(data), progress=False).path


def test_report_holds_the_grid_tables_figures_and_links(tiny_run, tmp_path):
    page = write_report([str(tiny_run)], tmp_path / "report")
    html = page.read_text()
    for section in ("grid", "poisoning", "roc", "triggers", "runs"):
        assert f'id="{section}"' in html
    assert '· badnet <span class="ca">(s0)</span></td>' in html  # a row per (model, attack)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 3  # STRIP's ROC, the trigger and its difference from grey
    assert 'alt="trigger_badnet, difference from grey"' in html
    for image in images:
        assert base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n"
    links = set(re.findall(r'href="([^"#]+)"', html))
    assert links and all((page.parent / link).resolve() == tiny_run.resolve() for link in links)
    assert "commit" in html and "seed 0" in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from a network


def test_report_of_folders_that_are_not_runs_is_one_line(tmp_path):
    (tmp_path / "not_a_run").mkdir()
    with pytest.raises(UserError, match="not_a_run is not a finished run folder"):
        write_report([str(tmp_path / "not_a_run")], tmp_path / "report")
    assert not (tmp_path / "report").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_headless_chromium_renders_every_section_with_no_missing_image(tiny_run, tmp_path):
    page = write_report([str(tiny_run)], tmp_path / "report")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    done = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    dom = done.stdout
    images = int(re.search(r'data-images="(\d+)"', dom).group(1))
    broken = int(re.search(r'data-broken="(\d+)"', dom).group(1))
    assert images >= 2 and broken == 0, (images, broken)
    for section in ("grid", "poisoning", "roc", "triggers", "runs"):
        assert f'id="{section}"' in dom
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1280,900", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert Path(shot).stat().st_size > 10_000


def test_the_matrix_detectors_of_one_attack_and_seed_share_one_roc_figure(tmp_path):
    """Two detection cells of one attack and seed (and one of another seed): two figures, the
    first with both detectors' curves, each linked to its cell, from the scores the cells kept."""
    import numpy as np
    from PIL import Image

    from clip_backdoor.reports.html import Run, Source
    from clip_backdoor.reports.matrix_roc import matrix_roc_figures, read_scores

    rng = np.random.default_rng(0)
    runs = []
    for detector, seed in (("strip", 0), ("teco", 0), ("strip", 1)):
        folder = tmp_path / f"badnet--{detector}--s{seed}"
        (folder / "artifacts" / "detection").mkdir(parents=True)
        lines = ["index,label,score_clean,score_triggered,pred_clean,pred_triggered"]
        lines += [f"{i},0,{rng.normal()},{rng.normal(1.0)},0,1" for i in range(30)]
        (folder / "artifacts" / "detection" / f"{detector}.csv").write_text("\n".join(lines))
        config = {
            "model": {"name": "m"},
            "seed": seed,
            "matrix_cell": {"attack": "badnet", "column": detector, "kind": "detection"},
        }
        source = Source(folder.name, folder.name, "r.yaml", "abc", seed, "cpu")
        runs.append(Run(folder, {}, config, source))
    figures = matrix_roc_figures(runs, encode=lambda path: np.asarray(Image.open(path)).shape)
    assert [f["title"] for f in figures] == ["m · badnet, seed 0", "m · badnet, seed 1"]
    assert [d for d, _ in figures[0]["sources"]] == ["strip", "teco"]
    assert figures[0]["sources"][1][1].run == "badnet--teco--s0"
    assert figures[0]["uri"][0] > 100  # a rendered PNG, read back
    scores = read_scores(tmp_path / "badnet--strip--s1" / "artifacts" / "detection" / "strip.csv")
    assert len(scores["clean"]) == len(scores["triggered"]) == 30


def test_a_trigger_is_shown_with_its_difference_from_grey_stretched(tmp_path):
    """A faint patch (+6 levels on mid-grey) is invisible in the render; stretched, it is white
    on black and the page says by how much it was stretched."""
    import numpy as np
    from PIL import Image

    from clip_backdoor.reports.trigger_view import GREY, stretched_difference

    render = np.full((16, 16, 3), GREY, np.uint8)
    render[2:4, 5:7, 1] += 6
    Image.fromarray(render).save(tmp_path / "trigger_faint.png")
    uri, peak = stretched_difference(tmp_path / "trigger_faint.png")
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert peak == 6 and shown[2:4, 5:7].min() == 255 and shown.sum() == 4 * 255
    Image.fromarray(np.full((16, 16, 3), GREY, np.uint8)).save(tmp_path / "trigger_none.png")
    assert stretched_difference(tmp_path / "trigger_none.png")[1] == 0  # plain grey: no divide


def test_the_html_grid_names_the_seeds_of_a_row_and_of_a_cell_with_fewer(tmp_path):
    """A row being filled: `none` has seeds 0 and 1, `ft` only seed 0; the row says (s0, s1)
    and the ft cell says (s0), so a one-seed number is not read as a two-seed mean; a two-seed
    cell carries its spread."""
    from clip_backdoor.reports.html import Run, Source, grid

    def cell(column: str, seed: int, asr: float) -> Run:
        config = {
            "model": {"name": "m"},
            "seed": seed,
            "matrix_cell": {"attack": "badnet", "column": column, "kind": "defense"},
        }
        metrics = {"points": [{"kind": "defense", "point": column, "ca": 0.5, "asr": asr}]}
        source = Source(f"{column}-s{seed}", ".", "r.yaml", "abc", seed, "cpu")
        return Run(tmp_path, metrics, config, source)

    found = grid([cell("none", 0, 0.9), cell("none", 1, 0.8), cell("ft", 0, 0.4)])
    (row,) = found["rows"]
    assert row["seeds"] == "s0, s1"
    by_column = dict(zip(found["defenses"], row["cells"], strict=True))
    assert by_column["none"]["seeds"] == "" and round(by_column["none"]["asr"], 6) == 85.0
    assert by_column["none"]["spread"] == "± 5.0"  # half the range, as results/matrix.md has it
    assert by_column["ft"]["spread"] == ""
    assert by_column["ft"]["seeds"] == "s0"
