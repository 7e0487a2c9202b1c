"""Sample clips in the report: GIFs embedded as data URIs, a prompt × variant grid, one run's latest samples."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Optional, Union

from t2s.rundir import RunDir

from .load import Run, Study

__all__ = ['gif_data_uri', 'latest_samples', 'samples_html', 'run_samples_html']

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


def _img(run: Run, entry: dict, caption: str) -> str:
    uri = gif_data_uri(RunDir(run.folder).samples / entry["file"])
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
            cells += "<td>" + (_img(chosen[variant], entry, f"step {entry.get('step')}") if entry else "—") + "</td>"
        body += f"<tr><th style='max-width:220px;text-align:left'>{html.escape(prompt)}</th>{cells}</tr>"
    return f"<table><thead><tr><th>prompt</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def run_samples_html(run: Run, last_steps: int = 3) -> Optional[str]:
    """One run's samples of its last few sampling steps, each captioned 'step · weights · prompt'."""
    entries = _sample_entries(run)
    steps = sorted({e.get("step") or 0 for e in entries})[-last_steps:]
    entries = [e for e in entries if (e.get("step") or 0) in steps]
    if not entries:
        return None
    figures = [_img(run, e, f"step {e.get('step')} · {e.get('weights')} · {e.get('prompt')}") for e in entries]
    return "<div>" + "".join(figures) + "</div>"
