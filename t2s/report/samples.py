"""Sample clips in the report: GIFs embedded as data URIs, a prompt × variant grid, one run's latest samples."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Optional, Union

from t2s.report.load import Run, Study
from t2s.rundir import RunDir


def gif_data_uri(path: Union[str, Path]) -> str:
    """A GIF file as a data URI, so the HTML needs no file next to it."""
    return "data:image/gif;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _sample_entries(run: Run) -> list:
    """samples.json entries whose GIF exists; without samples.json, every GIF in samples/ (prompt unknown)."""
    folder = RunDir(run.folder).samples
    entries = run.samples or [{"file": p.name, "prompt": p.stem, "step": None, "weights": None}
                              for p in sorted(folder.glob("*.gif"))]
    plain = [e for e in entries if isinstance(e, dict) and Path(str(e.get("file", ""))).name == e.get("file")]
    return [e for e in plain if (folder / e["file"]).is_file()]  # a name, not a path: nothing outside samples/


def latest_samples(run: Run) -> dict:
    """prompt -> entry: the latest step's samples, of the deployed weights where there are such."""
    entries = _sample_entries(run)
    deployed = [e for e in entries if e.get("weights") == run.deployed_weights]
    entries = deployed or entries
    if not entries:
        return {}
    last = max((e.get("step") or 0) for e in entries)
    return {str(e.get("prompt")): e for e in entries if (e.get("step") or 0) == last}


def sample_img_html(run: Run, entry: dict, caption: str, folder: Optional[Path] = None) -> str:
    uri = gif_data_uri((folder or RunDir(run.folder).samples) / entry["file"])
    text = html.escape(caption)
    return (f'<figure style="display:inline-block;margin:4px;text-align:center">'
            f'<img src="{uri}" alt="{text}" style="width:128px;image-rendering:pixelated">'
            f'<figcaption style="font-size:small;max-width:160px">{text}</figcaption></figure>')


def samples_html(study: Study) -> Optional[str]:
    """A prompt × variant grid of animated GIFs (latest step, deployed weights, lowest finished seed)."""
    chosen = {v: study.runs_of(v)[0] for v in study.variants_with_results}
    picked = {v: latest_samples(run) for v, run in chosen.items()}
    prompts = list(dict.fromkeys(p for samples in picked.values() for p in samples))
    if not prompts:
        return None
    head = "".join(
        f"<th>{html.escape(v)}<br><small>{html.escape(chosen[v].name)}, {html.escape(chosen[v].deployed_weights)} "
        f"weights</small></th>" for v in picked)
    body = ""
    for prompt in prompts:
        cells = ""
        for variant, samples in picked.items():
            entry = samples.get(prompt)
            cells += "<td>" + (sample_img_html(chosen[variant], entry, f"step {entry.get('step')}") if entry
                               else _no_sample(chosen[variant], bool(samples))) + "</td>"
        body += f"<tr><th style='max-width:220px;text-align:left'>{html.escape(prompt)}</th>{cells}</tr>"
    return f"<table><thead><tr><th>prompt</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def no_sample_reason(run: Run, has_others: bool) -> str:
    """Why a run has no sample of a prompt, in plain text (the samples grid and the notebook's explorer say it)."""
    if has_others:
        return "it sampled other prompts"
    shared = run.metadata.get("shared_training")
    if isinstance(shared, dict) and shared.get("from"):
        # a derived run (t2s/study/derived.py) takes its provider's samples of the raw weights, and a run keeping an EMA
        # samples only its EMA weights while it trains
        return (f"no training samples: its weights are {shared['from']}'s raw weights (shared training), which "
                f"sampled its EMA weights; see Evaluation clips")
    return "no training samples in this run"


def _no_sample(run: Run, has_others: bool) -> str:
    """The samples grid's cell of a variant without a sample of this prompt: a dash beside its other prompts' samples,
    else why it has none."""
    if has_others:
        return "—"
    return f"<small style='display:inline-block;max-width:180px'>{html.escape(no_sample_reason(run, False), quote=False)}</small>"


def run_samples_html(run: Run, last_steps: int = 3) -> Optional[str]:
    """One run's samples of its last few sampling steps, each captioned 'step · weights · prompt'."""
    entries = _sample_entries(run)
    steps = sorted({e.get("step") or 0 for e in entries})[-last_steps:]
    entries = [e for e in entries if (e.get("step") or 0) in steps]
    if not entries:
        return None
    figures = [sample_img_html(run, e, f"step {e.get('step')} · {e.get('weights')} · {e.get('prompt')}") for e in entries]
    return "<div>" + "".join(figures) + "</div>"


def evaluation_entries(run: Run) -> list:
    """The run's evaluation/index.json entries whose GIF exists (a plain file name inside evaluation/); [] without."""
    folder = RunDir(run.folder).evaluation
    try:
        entries = json.loads(RunDir(run.folder).evaluation_index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    plain = [e for e in entries if isinstance(e, dict) and Path(str(e.get("file", ""))).name == e.get("file")]
    return [e for e in plain if (folder / e["file"]).is_file()]


def evaluation_samples_html(study: Study, per_split: int = 2) -> Optional[str]:
    """Per evaluation caption (the first `per_split` of each caption split), the real clip beside each variant's clip
    (lowest finished seed, deployed weights), each with the back-translation recognizer's reading under it."""
    chosen = {v: study.runs_of(v)[0] for v in study.variants_with_results}
    entries = {v: evaluation_entries(run) for v, run in chosen.items()}
    source = next((v for v in chosen if any(e.get("weights") == "real" for e in entries[v])), None)
    if source is None:
        return None
    real = [e for e in entries[source] if e.get("weights") == "real"]
    shown, counts = [], {}
    for e in real:
        split = str(e.get("split"))
        if counts.get(split, 0) < per_split:
            counts[split] = counts.get(split, 0) + 1
            shown.append(e)

    def reading(entry: dict) -> str:
        text = entry.get("reading")
        return "reads: " + (text if text else "(nothing)") if text is not None else "no recognizer reading"

    def cell(variant: str, entry: Optional[dict]) -> str:
        if entry is None:
            return "<td>—</td>"
        folder = RunDir(chosen[variant].folder).evaluation
        return "<td>" + sample_img_html(chosen[variant], entry, reading(entry), folder) + "</td>"

    e_ = html.escape
    head = f"<th>real clip<br><small>held-out signer ({e_(chosen[source].name)})</small></th>" + "".join(
        f"<th>{e_(v)}<br><small>{e_(chosen[v].name)}, {e_(chosen[v].deployed_weights)} weights</small></th>"
        for v in chosen)
    body = ""
    for item in shown:
        key = (item.get("index"), item.get("prompt"))
        row = cell(source, item)
        for variant in chosen:
            match = next((e for e in entries[variant] if e.get("weights") == chosen[variant].deployed_weights
                          and (e.get("index"), e.get("prompt")) == key), None)
            row += cell(variant, match)
        label = (f"<b>{e_(str(item.get('split')))}</b>: {e_(str(item.get('prompt')))}"
                 f"<br><small>glosses: {e_(str(item.get('glosses') or '—'))}</small>")
        body += f"<tr><th style='max-width:220px;text-align:left'>{label}</th>{row}</tr>"
    return f"<table><thead><tr><th>caption</th>{head}</tr></thead><tbody>{body}</tbody></table>"
