"""The eval's HTML page: headline table, plots, and audio players for a sample of generations.

One self-contained folder (report.html, plots/*.png, audio/*.wav with relative links) that a
person opens in a browser, copies or serves as is. The folder may be a gs:// URL: the page and
its plots are made in a local staging folder and uploaded file by file, plots first, so an
existing report.html has its plots. A small script on the page counts the plots
and audio players the browser could load and writes the counts on <body> (data-images-loaded,
data-audio-loaded): the render test in headless Chromium reads them.
"""

from __future__ import annotations

import datetime
import html
import os
from typing import Mapping, Optional

import numpy as np

from musiclm_jax import fileio
from musiclm_jax.audio.plots import spectrogram_sheet
from musiclm_jax.evaluation.metrics import SIGNIFICANCE_LEVEL, TOO_FEW_CLIPS

REPORT_FILE = "report.html"

# What each headline metric means and which way is better.
_EXPLAIN = {
    "fad": ("Frechet Audio Distance", "lower"),
    "fad_inf": ("FAD extrapolated to infinitely many clips (fit over subset sizes)", "lower"),
    "kad": ("kernel audio distance (unbiased MMD^2, RBF kernel; ~0 or below: indistinguishable)", "lower"),
    "codec": ("references through the codec", ""),
    "kld": ("KL of the attribute classifier's label distributions, reference || generation", "lower"),
    "mcc": ("MuLan cycle consistency: cosine of caption and generated audio", "higher"),
    "mcc_reference": ("MCC of the references themselves (a perfect generator's score)", "higher"),
}
_DISTANCES = (
    ("distances", "", "references vs generations"),
    ("distances_codec", "_codec", "references vs their codec reconstructions (the floor through this codec)"),
)
_SCRIPT = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  document.body.dataset.imagesLoaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.imagesTotal = imgs.length;
  var audios = Array.from(document.querySelectorAll('audio'));
  var loaded = 0;
  document.body.dataset.audioTotal = audios.length;
  document.body.dataset.audioLoaded = 0;
  audios.forEach(function (a) {
    function done() { loaded += 1; document.body.dataset.audioLoaded = loaded; }
    if (a.readyState >= 1) { done(); } else { a.addEventListener('loadedmetadata', done); }
    a.load();
  });
});
</script>
"""
_STYLE = """
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.sample { border-top: 1px solid #ccc; padding: 1em 0; }
.caption { font-size: 1.05em; font-weight: 600; }
img { max-width: 100%; }
.small { color: #666; font-size: 0.9em; }
</style>
"""


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.4g}" if isinstance(x, float) else html.escape(str(x))


def _headline_rows(results: Mapping) -> list[tuple[str, str, str, str]]:
    """(metric, value cell HTML, what, better) per headline number; a distance that too few
    clips make meaningless reads 'too few clips', with the reason under 'what'."""
    rows = []
    for group, suffix, what in _DISTANCES:
        for name, d in results.get(group, {}).items():
            points = f"{d['n_reference']} reference / {d['n_generated']} generated points, {d['dim']}-d"
            for metric in ("fad", "fad_inf", "kad"):
                reason = d["too_few_clips"].get(metric)
                rows.append(
                    (
                        f"{metric}{suffix} ({name})",
                        html.escape(TOO_FEW_CLIPS) if reason else _num(d[metric]),
                        f"{_EXPLAIN[metric][0]}, {what}; " + (reason or points),
                        _EXPLAIN[metric][1],
                    )
                )
    if "kld" in results:
        rows.append(("kld", _num(results["kld"]["mean"]), _EXPLAIN["kld"][0] + " (mean over attributes)", "lower"))
    for key in ("mcc", "mcc_reference"):
        if key in results:
            rows.append((key, _num(results[key]), *_EXPLAIN[key]))
    for k, v in results.get("codec", {}).items():
        better = {"mel_distance": "lower", "si_sdr": "higher"}.get(k, "")
        rows.append((f"codec {k}", _num(v), _EXPLAIN["codec"][0], better))
    if "generation" in results:
        g = results["generation"]
        rows.append(
            (
                "generation speed",
                f"{g['realtime_factor']:.3g}x real time",
                f"{g['wall_s']:.1f} s for all captions, batch {g['batch_size']}",
                "higher",
            )
        )
    return rows


def _adherence_table(results: Mapping) -> str:
    gen = results.get("adherence", {})
    if not gen:
        return ""
    ref, ceil = results.get("adherence_reference", {}), results.get("adherence_codec_ceiling", {})
    lines = [
        "<table><tr><th>attribute</th><th>captions (n)</th><th>generated</th><th>chance</th>"
        "<th>shuffled chance</th><th>binomial p</th>"
        f"<th>above chance (p &lt; {SIGNIFICANCE_LEVEL:g})</th><th>references</th><th>codec reconstructions</th></tr>"
    ]

    def with_p(a):
        return None if a is None else f"{a['accuracy']:.3g} (p {a['p']:.2g})" if "p" in a else a["accuracy"]

    for attr, a in gen.items():
        cells = [
            attr,
            a["n"],
            f"{a['accuracy']:.3g} ({a['successes']}/{a['n']})" if "successes" in a else a["accuracy"],
            a["chance"],
            a["shuffled_chance"],
            f"{a['p']:.2g}" if "p" in a else None,
            "yes" if a["above_chance"] else "no",
            with_p(ref.get(attr)),
            with_p(ceil.get(attr)),
        ]
        lines.append(
            "<tr>"
            + "".join(
                f"<td class='num'>{_num(c)}</td>" if not isinstance(c, str) else f"<td>{html.escape(c)}</td>"
                for c in cells
            )
            + "</tr>"
        )
    return "\n".join(lines) + "</table>"


def plot_adherence(results: Mapping, path: str) -> Optional[str]:
    """Bars per attribute: generated, chance, the references and their codec reconstructions."""
    gen = results.get("adherence", {})
    if not gen:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attrs = list(gen)
    series = [
        ("generated", [gen[a]["accuracy"] for a in attrs]),
        ("chance", [max(gen[a]["chance"], gen[a]["shuffled_chance"]) for a in attrs]),
    ]
    for key, label in (("adherence_reference", "references"), ("adherence_codec_ceiling", "codec reconstructions")):
        if results.get(key):
            series.append((label, [results[key].get(a, {}).get("accuracy", np.nan) for a in attrs]))
    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series):
        ax.bar(np.arange(len(attrs)) + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(np.arange(len(attrs)), attrs)
    ax.set(ylim=(0, 1.05), ylabel="detector agrees with caption", title="attribute adherence")
    ax.legend(fontsize=8, ncols=len(series), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_embeddings(
    points: Mapping[str, tuple[np.ndarray, np.ndarray]], distances: Mapping[str, Mapping], path: str
) -> Optional[str]:
    """Per embedder, references and generations projected on their two principal axes: the
    picture behind the FAD / KAD numbers (`distances`: {embedder: metrics.audio_distances})."""
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(points), figsize=(4.5 * len(points), 4), squeeze=False)
    for ax, (name, (ref, gen)) in zip(axes[0], points.items()):
        mean = ref.mean(0)
        _, _, vt = np.linalg.svd(np.concatenate([ref, gen]) - mean, full_matrices=False)
        axes2 = vt[:2].T if vt.shape[0] >= 2 else np.pad(vt.T, ((0, 0), (0, 1)))
        for data, label, marker in ((ref, "references", "o"), (gen, "generated", "x")):
            xy = (data - mean) @ axes2
            ax.scatter(xy[:, 0], xy[:, 1], label=label, marker=marker, s=28)
        d = distances.get(name, {})
        numbers = ", ".join(
            f"{m.upper()} {d[m]:.3g}" if d.get(m) is not None else f"{m.upper()}: {TOO_FEW_CLIPS}"
            for m in ("fad", "kad")
        )
        ax.set(title=f"{name} embeddings\n({numbers})", xlabel="PC 1", ylabel="PC 2")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_kld(results: Mapping, path: str) -> Optional[str]:
    kld = {k: v for k, v in results.get("kld", {}).items() if k != "mean"}
    if not kld:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 2.8))
    ax.bar(list(kld), list(kld.values()), color="tab:purple")
    ax.set(ylabel="KL (nats)", title=f"KLD per attribute (mean {results['kld']['mean']:.3g}; lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _sample_html(row: Mapping, png: Optional[str]) -> str:
    parts = [f"<div class='sample'><div class='caption'>{html.escape(row['caption'])}</div>"]
    meta = [f"id {html.escape(str(row['id']))}"]
    if "mulan_score" in row:
        meta.append(f"MuLan score {row['mulan_score']:.3f}")
    if row.get("labels"):
        stated = [a for a in row.get("mentioned", []) if a in row["detected"]]
        meta.append(
            "stated / detected: "
            + ", ".join(
                f"{a} {html.escape(str(row['labels'][a]))} / {html.escape(str(row['detected'][a]))}" for a in stated
            )
        )
    parts.append(f"<div class='small'>{'; '.join(meta)}</div>")
    parts.append("<table><tr><th>generated</th><th>reference</th></tr><tr>")
    for key in ("generated_wav", "reference_wav"):
        src = row.get(key)
        parts.append(
            f"<td><audio controls preload='metadata' src='{html.escape(src)}'></audio></td>"
            if src
            else "<td class='small'>(not kept)</td>"
        )
    parts.append("</tr></table>")
    if png:
        parts.append(f"<img src='{html.escape(png)}' alt='spectrograms: generated over reference'>")
    return "".join(parts) + "</div>"


def _melody_html(melody: Mapping) -> str:
    """Music made to follow hummed tunes: the means against text only (chance) and the tune
    played (ceiling), then per tune the hum, the music and both pitch curves (paths relative to
    the report)."""
    kinds = (("with_tune", "with the tune"), ("text_only", "text only (chance)"), ("played_tune", "the tune played"))
    rows = "".join(
        f"<tr><td>{label}</td>"
        + "".join(
            f"<td class='num'>{_num(melody['mean'][kind][m])}</td>" for m in ("chroma_cosine", "pitch_class_agreement")
        )
        + "</tr>"
        for kind, label in kinds
    )
    parts = [
        "<h2>Melody: music following hummed tunes</h2><p class='small'>Each tune hummed (held out), music generated "
        "under a caption with it and without it; scored against the hum by librosa's chroma and pyin: chroma "
        "cosine (MusicGen's melody measure) and the share of the hum's voiced frames where the music sounds the "
        "same pitch class.</p>",
        f"<table><tr><th>music</th><th>chroma cosine</th><th>pitch-class agreement</th></tr>{rows}</table>",
    ]
    for t in melody["tunes"]:
        parts.append(
            f"<div class='sample'><div class='caption'>{html.escape(t['prompt'])}</div>"
            f"<div class='small'>chroma cosine {_num(t['with_tune']['chroma_cosine'])} with the tune, "
            f"{_num(t['text_only']['chroma_cosine'])} text only</div>"
            "<table><tr><th>hummed tune</th><th>music</th></tr><tr>"
            f"<td><audio controls preload='metadata' src='{html.escape(t['tune'])}'></audio></td>"
            f"<td><audio controls preload='metadata' src='{html.escape(t['wav'])}'></audio></td></tr></table>"
            f"<img src='{html.escape(t['png'])}' alt='pitch curves of the tune and the music'></div>"
        )
    return "".join(parts)


def write_report(
    output_dir: str,
    results: Mapping,
    *,
    references: np.ndarray,
    generated: np.ndarray,
    sample_rate: int,
    points: Mapping[str, tuple[np.ndarray, np.ndarray]],
    num_samples: int = 8,
) -> str:
    """Writes output_dir/report.html and its plots (plots/*.png), the page last; the WAVs named
    in results['items'] must already be in output_dir. Returns the page's path."""
    with fileio.local_dir(fileio.join(output_dir, "plots")) as plots_dir:
        page = _report_page(
            plots_dir,
            results,
            references=references,
            generated=generated,
            sample_rate=sample_rate,
            points=points,
            num_samples=num_samples,
        )
    path = fileio.join(output_dir, REPORT_FILE)
    fileio.write_text(path, page)
    return path


def _report_page(
    plots_dir: str,
    results: Mapping,
    *,
    references: np.ndarray,
    generated: np.ndarray,
    sample_rate: int,
    points: Mapping[str, tuple[np.ndarray, np.ndarray]],
    num_samples: int,
) -> str:
    """Draws the plots into the local `plots_dir`; returns the page (links: plots/<name>)."""
    figures = [
        plot_adherence(results, os.path.join(plots_dir, "adherence.png")),
        plot_embeddings(points, results.get("distances", {}), os.path.join(plots_dir, "embeddings.png")),
        plot_kld(results, os.path.join(plots_dir, "kld.png")),
    ]
    samples = []
    for k, row in enumerate(results["items"][:num_samples]):
        png = os.path.join(plots_dir, f"sample_{k:03d}.png")
        spectrogram_sheet([("generated", generated[k], sample_rate), ("reference", references[k], sample_rate)], png)
        samples.append(_sample_html(row, f"plots/{os.path.basename(png)}"))

    title = html.escape(results.get("title", "eval"))
    headline = "".join(
        f"<tr><td>{html.escape(n)}</td><td class='num'>{v}</td><td>{html.escape(what)}</td><td>{better}</td></tr>"
        for n, v, what, better in _headline_rows(results)
    )
    body = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>{_STYLE}</head><body>",
        f"<h1>{title}</h1>",
        f"<p class='small'>{results['num_items']} captions, {results['seconds']:.3g} s each, seed {results['seed']}; "
        f"written {datetime.datetime.now().isoformat(timespec='seconds')}. Numbers in results.json, "
        f"curves in tensorboard/.</p>",
        f"<h2>Metrics</h2><table><tr><th>metric</th><th>value</th><th>what</th><th>better</th></tr>{headline}</table>",
    ]
    adherence = _adherence_table(results)
    if adherence:
        body.append(
            "<h2>Attribute adherence</h2><p class='small'>Per attribute a caption states: how often the "
            "detector's label of the music equals the caption's. Chance is 1 / classes; shuffled chance is "
            "the agreement if captions and music were paired at random. p: one-sided binomial test of the "
            "hits among n against the larger of the two chances; above chance means p &lt; "
            f"{SIGNIFICANCE_LEVEL:g}, not merely a higher accuracy.</p>" + adherence
        )
    for fig in figures:
        if fig:
            body.append(f"<img src='{html.escape('plots/' + os.path.basename(fig))}' alt='{os.path.basename(fig)}'>")
    if results.get("melody"):
        body.append(_melody_html(results["melody"]))
    body.append(f"<h2>Samples ({len(samples)} of {results['num_items']})</h2>")
    body.extend(samples)
    body.append(_SCRIPT + "</body></html>")
    return "\n".join(body)
