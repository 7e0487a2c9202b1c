"""The analysis notebook's ipywidgets explorer without a browser: each control, changed as a user would (`.value = `),
rebuilds what the Output widget shows (seeds figure, the variant's loss figure, its sample for the prompt)."""
from __future__ import annotations

import base64
import html
import shutil

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from runfactory import make_study

from t2s.report import load, notebook

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def explorer(tmp_path):
    executed = make_study(tmp_path, "demo", variants=("baseline", "no_ema"), seeds=(0, 1), prompts=("thank you", XSS))
    study = load.load_study("demo", executed)
    return study, notebook.explorer_widget(study)


def shown(view) -> tuple:
    """The Output widget's three items: the seeds figure, the loss figure (as plotly JSON) and the sample's HTML."""
    outputs = view.output.outputs
    assert [o["output_type"] for o in outputs] == ["display_data"] * 3
    seeds, loss, sample = (o["data"] for o in outputs)
    return seeds["application/vnd.plotly.v1+json"], loss["application/vnd.plotly.v1+json"], sample["text/html"]


def names(figure: dict) -> list:
    return [t.get("name") for t in figure["data"]]


def seed_values(figure: dict) -> dict:
    """Each trace's y values, decoded from plotly's typed-array JSON ({"bdata": base64, "dtype": ...})."""
    def values(y):
        return np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"]).tolist() if isinstance(y, dict) else y
    return {trace["name"]: sorted(values(trace["y"])) for trace in figure["data"]}


def test_the_controls_offer_the_study_and_start_on_its_first_choices(explorer):
    study, view = explorer
    assert view.variant.options == ("baseline", "no_ema")
    assert view.prompt.options == ("thank you", XSS)
    keys = [key for _, key in view.metric.options]
    assert keys == [m.key for m in load.available_metrics(study)] and len(keys) > 3
    assert (view.variant.value, view.metric.value, view.prompt.value) == ("baseline", keys[0], "thank you")
    assert view.box.children[1] is view.output and list(view.box.children[0].children) == [view.variant, view.metric,
                                                                                             view.prompt]
    seeds, loss, sample = shown(view)
    assert seeds["layout"]["title"]["text"].endswith(": one point per seed")
    assert [n for n in names(loss) if "(n=" in str(n)] == ["baseline (n=2)"]
    assert 'alt="baseline: thank you"' in sample


def test_the_variant_control_switches_the_loss_figure_and_the_sample(explorer):
    study, view = explorer
    before = shown(view)
    view.variant.value = "no_ema"
    seeds, loss, sample = shown(view)
    assert seeds == before[0]  # every variant's seeds, whichever is picked
    assert [n for n in names(loss) if "(n=" in str(n)] == ["no_ema (n=2)"]
    assert 'alt="no_ema: thank you"' in sample and "baseline" not in sample


def test_the_metric_control_switches_the_seeds_figure(explorer):
    study, view = explorer
    (title, key), = [(t, k) for t, k in view.metric.options if k == "val_loss_raw"]
    assert view.metric.value != key
    view.metric.value = key
    seeds, _, sample = shown(view)
    assert seeds["layout"]["title"]["text"] == f"{title}: one point per seed"
    values = study.values
    expected = {v: sorted(values.loc[values["variant"] == v, key]) for v in ("baseline", "no_ema")}
    assert seed_values(seeds) == pytest.approx(expected)
    assert expected["baseline"] != expected["no_ema"]
    assert 'alt="baseline: thank you"' in sample


def test_the_prompt_control_switches_the_sample_and_escapes_its_caption(explorer):
    _, view = explorer
    view.prompt.value = XSS
    *_, sample = shown(view)
    assert XSS not in sample and f'alt="baseline: {html.escape(XSS)}"' in sample
    assert "data:image/gif;base64," in sample


def test_a_study_without_samples_offers_none_and_says_so(tmp_path):
    executed = make_study(tmp_path, "bare", variants=("baseline",), seeds=(0,))
    for samples in (executed / "bare").glob("*/samples"):
        shutil.rmtree(samples)
    view = notebook.explorer_widget(load.load_study("bare", executed))
    assert view.prompt.options == ("(no samples)",)
    assert view.output.outputs[2]["data"]["text/plain"] == ("No sample for this prompt in baseline: no training samples "
                                                            "in this run.")


def test_a_derived_variant_without_samples_says_why_in_the_explorer(tmp_path):
    import json

    executed = make_study(tmp_path, "x", variants=("baseline", "no_ema"), seeds=(0,))
    derived = executed / "x" / "no_ema-seed0"
    shutil.rmtree(derived / "samples")
    meta = json.loads((derived / "metadata.json").read_text())
    meta["shared_training"] = {"from": "baseline-seed0", "checkpoint": "x", "step": 5, "differing_keys": ["use_ema"]}
    (derived / "metadata.json").write_text(json.dumps(meta))
    view = notebook.explorer_widget(load.load_study("x", executed))
    assert "data:image/gif;base64," in shown(view)[2]  # the baseline's sample
    view.variant.value = "no_ema"
    assert view.output.outputs[2]["data"]["text/plain"] == (
        "No sample for this prompt in no_ema: no training samples: its weights are baseline-seed0's raw weights "
        "(shared training), which sampled its EMA weights; see Evaluation clips.")


def test_explorer_displays_the_widget_or_a_note(explorer, tmp_path):
    study, _ = explorer
    InteractiveShell.instance()
    with capture_output() as shown_here:
        notebook.explorer(study)
        notebook.explorer(load.load_study("none", tmp_path / "nothing"))
    widget, note = shown_here.outputs
    assert "application/vnd.jupyter.widget-view+json" in widget.data
    assert "No finished runs to explore." in note.data["text/html"]
