"""`musiclm <mode> --gin_file=F [--gin_file=G ...] [--gin.KEY=VALUE ...]` (the T5X shape).

Thin: parses flags and gin, then calls the keyword-only library function of the mode.
Bad configuration exits with status 2 and one line naming the culprit.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import sys
import traceback
from typing import Optional, Sequence

MODES = {
    "train": "train a model (resumes from MODEL_DIR)",
    "eval": "evaluate a checkpoint on an eval split; with runs/eval_text_to_music.gin: the text-to-music eval task "
    "(generate per caption; FAD, KLD, MCC, adherence, codec metrics; results.json + report.html)",
    "aot": "compile the train step for a TPU topology on this machine and report memory/FLOPs",
    "inspect": "write a raw-audio task's examples as WAVs plus a PNG sheet of spectrograms",
    "fit_mulan_rvq": "fit the MuLan-token RVQ on a trained MuLan's audio embeddings of a task",
    "fit_melody_rvq": "fit the melody-token RVQ on a trained melody model's window embeddings of a task",
    "fit_semantic_kmeans": "fit the semantic-token k-means on a trained w2v-BERT's layer embeddings of a task",
    "precompute": "tokenize a raw-audio task once with the frozen MuLan, w2v-BERT and SoundStream into a token cache",
    "generate": "text -> music: a WAV (+ JSON sidecar, PNG spectrogram) per prompt from the trained models' "
    "directories",
    "export": "--model_dir=D --output_dir=O [--dtype=bfloat16]: one model, params only; with runs/export.gin: "
    "the five models + StableHLO samplers and codec decoder (cpu, tpu)",
    "serve": "a web page and JSON API that make music: --model_dir=D (a pipeline directory or an export bundle), "
    "or runs/serve.gin with the model directories as generate takes them",
    "pipeline": "the whole recipe on the synthetic source (train the five models, tokenize, generate, evaluate); "
    "resumable",
}

# The entry function each mode calls (its gin bindings are what the mode reads).
MODE_ENTRY = {
    "train": "train",
    "eval": "evaluate",
    "aot": "compile_for_topology",
    "inspect": "inspect_task",
    "fit_mulan_rvq": "fit_mulan_rvq",
    "fit_melody_rvq": "fit_melody_rvq",
    "fit_semantic_kmeans": "fit_semantic_kmeans",
    "precompute": "precompute_tokens",
    "generate": "generate",
    "export": "export_musiclm",
    "serve": "serve",
    "pipeline": "run_pipeline",
}
# Every entry function a mode may call (an error raised inside one is not "building" a part).
ENTRY_FUNCTIONS = (*MODE_ENTRY.values(), "evaluate_text_to_music")


def _split_gin_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Pulls `--gin.KEY=VALUE` out of argv (argparse cannot declare dynamic flags)."""
    rest, bindings = [], []
    for arg in argv:
        if arg.startswith("--gin."):
            key, eq, value = arg[len("--gin.") :].partition("=")
            if not eq:
                raise SystemExit(_usage_error(f"{arg}: expected --gin.KEY=VALUE"))
            bindings.append(f"{key} = {value}")
        else:
            rest.append(arg)
    return rest, bindings


def _usage_error(msg: str) -> int:
    print(f"musiclm: error: {msg}", file=sys.stderr)
    return 2


SIGTERM_STATUS = 143  # 128 + SIGTERM, as a shell reports a process ended by the signal


def _failed(what: str, exc: BaseException, status: int = 1) -> int:
    """A run that stopped for a reason the user can act on: one line, no traceback."""
    text = str(exc).strip().splitlines()
    print(f"musiclm: {what}: {text[0] if text else type(exc).__name__}", file=sys.stderr)
    return status


def _quiet_tensorflow_import() -> None:
    """TensorFlow (under seqio) prints C++ start-up logs that no environment variable silences;
    hide stderr at the file-descriptor level while it imports. Python errors still raise."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


class _DropGinSearchMisses(logging.Filter):
    # gin logs an error for every search path a file is not in before it finds it; seqio
    # warns about shuffling generated (uncached) tasks, which are deterministic here.
    def filter(self, record):
        msg = str(record.msg)
        return not (msg.startswith("Path not found") or msg.startswith("Using an uncached FunctionDataset"))


class _Once(argparse.Action):
    """A flag that may be given once: a second value is an error, not a silent override."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice ({getattr(namespace, self.dest)} and {values})")
        setattr(namespace, self.dest, values)


# Every flag, the modes that take it, and its argparse keywords. Each mode's parser has only its
# own flags, so `musiclm <mode> --help` lists those, and a flag of another mode is refused.
_ALL = tuple(MODES)
FLAGS = {
    "gin_file": (_ALL, dict(action="append", default=[], help="gin file (path, or relative to the packaged gin/)")),
    "verbose": (_ALL, dict(action="store_true", help="show library logs")),
    "topology": (("aot",), dict(default="v5e:4x4", help="TPU topology, e.g. v5e:4x4, v4:2x2x2, v5p:2x2x2")),
    "task": (("inspect",), dict(help="seqio task name (else inspect_task.task from gin)")),
    "num_examples": (("inspect",), dict(type=int, default=8, help="how many examples")),
    "split": (("inspect",), dict(default="train", help="train or validation")),
    "output_dir": (
        ("inspect", "generate", "export", "serve"),
        dict(
            help={
                "inspect": "where the WAVs, spectrograms.png and summary.json go",
                "generate": "where the WAVs go (else generate.output_dir from gin)",
                "export": "the new export directory",
                "serve": "where each request's uploads and results go (default ./musiclm_serve; a restart lists "
                "them again)",
            }
        ),
    ),
    "prompt": (("generate",), dict(action="append", default=[], help="a text prompt (repeatable)")),
    "prompt_file": (("generate",), dict(help="a file of prompts, one per line")),
    "story": (
        ("generate",),
        dict(
            action="append",
            default=[],
            help="story mode, one piece whose text changes: 'SECONDS:TEXT' (repeatable, in order)",
        ),
    ),
    "continue_from": (("generate",), dict(help="an audio file to continue (needs W2V_BERT_DIR in gin)")),
    "melody": (
        ("generate",),
        dict(
            help="an audio file of a tune (hummed, whistled or played) for the music to follow (needs a semantic "
            "stage trained with melody tokens and MELODY_DIR in gin)"
        ),
    ),
    "model_dir": (
        ("pipeline", "export", "serve"),
        dict(
            help={
                "pipeline": "where every model, the music and pipeline_summary.json go (local or gs://)",
                "export": "one model directory to export params-only (no gin)",
                "serve": "a pipeline directory or an export bundle (no gin)",
            }
        ),
    ),
    "data": (
        ("pipeline",),
        dict(
            help="your own collection instead of the synthetic music: a folder of audio files (captions in "
            "<name>.txt or <name>.json beside each) or a JSONL manifest"
        ),
    ),
    "plan": (
        ("pipeline", "train"),
        dict(
            action="store_true",
            help="print what would run (pipeline: each step's action, model, parameters, steps, batch; train: the "
            "model, parameters, steps, batch, data, devices and mesh, resume point, time per step), then stop",
        ),
    ),
    "from": (
        ("pipeline",),
        dict(
            dest="from_dir",
            help="reuse another pipeline directory's models: copy the tokenizers, fine-tune the stages (per step: "
            "--gin.run_pipeline.reuse=\"{'mulan': 'finetune'}\"; modes copy, finetune, train)",
        ),
    ),
    "size": (
        ("pipeline",),
        dict(
            choices=("tiny", "small"),
            action=_Once,
            help="the packaged pipeline/<size>.gin (default small), layered under your --gin_file and --gin.",
        ),
    ),
    "dtype": (("export",), dict(help="cast floating parameters, e.g. bfloat16 (default: as trained)")),
    # serve's limits: left out, run_server's defaults (or a gin binding of serve.*) apply
    "host": (
        ("serve",),
        dict(help="the address to bind (default 127.0.0.1: this machine only; 0.0.0.0: anyone who can reach it)"),
    ),
    "port": (("serve",), dict(type=int, help="the TCP port (default 8000)")),
    "max_seconds": (("serve",), dict(type=float, help="the longest music a request may ask for (default 30)")),
    "queue_size": (("serve",), dict(type=int, help="requests that may wait; one more is answered 503 (default 8)")),
    "max_candidates": (("serve",), dict(type=int, help="the most candidates a request may ask for (default 8)")),
    "max_upload_mb": (("serve",), dict(type=float, help="the largest request, its uploads together (default 20)")),
    "max_upload_seconds": (("serve",), dict(type=float, help="the longest tune or clip uploaded (default 60)")),
}
SERVE_LIMITS = ("host", "port", "max_seconds", "queue_size", "max_candidates", "max_upload_mb", "max_upload_seconds")
EPILOG = "Gin bindings: --gin.KEY=VALUE, e.g. --gin.MODEL_DIR=\"'/tmp/run'\" --gin.TRAIN_STEPS=100"


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line naming the mode (exit 2)."""

    def error(self, message):
        raise SystemExit(_usage_error(f"{self.prog.removeprefix('musiclm ')}: {message} (see {self.prog} --help)"))


def flags_of(mode: str) -> list[str]:
    return [name for name, (modes, _) in FLAGS.items() if mode in modes]


def _parser(mode: str) -> argparse.ArgumentParser:
    p = _OneLineParser(prog=f"musiclm {mode}", allow_abbrev=False, description=MODES[mode], epilog=EPILOG)
    for name in flags_of(mode):
        kwargs = FLAGS[name][1]
        if isinstance(kwargs.get("help"), dict):  # worded per mode
            kwargs = {**kwargs, "help": kwargs["help"][mode]}
        p.add_argument(f"--{name}", **kwargs)
    return p


def _top_help() -> str:
    width = max(map(len, MODES))
    rows = "\n".join(f"  {m:<{width}}  {what}" for m, what in MODES.items())
    return f"usage: musiclm <mode> [flags] [--gin.KEY=VALUE ...]\n\nMusicLM in JAX. Modes:\n{rows}\n\n" + (
        "`musiclm <mode> --help` lists a mode's flags.\n" + EPILOG
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The mode and its flags; SystemExit(2) after one line for a usage error (an unknown mode, a
    flag of another mode, a flag given twice that must be given once), SystemExit(0) after help."""
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help(), file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    mode, rest = argv[0], list(argv[1:])
    if mode.startswith("-"):
        raise SystemExit(_usage_error(f"{mode}: the mode comes first: musiclm <mode> [flags] (musiclm --help)"))
    if mode not in MODES:
        close = difflib.get_close_matches(mode, MODES, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise SystemExit(_usage_error(f"unknown mode {mode!r}{hint} (modes: {', '.join(MODES)})"))
    own = flags_of(mode)
    for arg in rest:
        name = arg[2:].partition("=")[0] if arg.startswith("--") else None
        if name and name not in own and name in FLAGS:
            takers = ", ".join(FLAGS[name][0])
            raise SystemExit(_usage_error(f"{mode}: --{name} is a flag of {takers}, not of {mode}"))
    args = _parser(mode).parse_args(rest)
    args.mode = mode
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, bindings = _split_gin_flags(argv)
    except SystemExit as e:
        return int(e.code)
    try:
        args = parse_args(argv)
    except SystemExit as e:  # a usage error (one line already printed) or --help
        return int(e.code or 0)
    if args.mode == "pipeline" and not args.model_dir:
        return _usage_error("pipeline needs --model_dir")
    if args.mode == "pipeline":
        data_gins = [f for f in args.gin_file if f.replace("\\", "/").lstrip("./").startswith(("data/", "gin/data/"))]
        if data_gins:  # no pipeline step reads the task a data gin registers: it would be ignored
            return _usage_error(
                f"pipeline: {data_gins[0]} registers a task that no pipeline step reads; give the collection "
                "itself: --data=FOLDER or --data=MANIFEST.jsonl"
            )
        # The size's packaged pipeline gin first, the user's files and bindings over it.
        args.gin_file = [f"pipeline/{args.size or 'small'}.gin", *args.gin_file]
    if args.mode in ("export", "serve") and args.model_dir and (args.gin_file or bindings):
        given = f"--gin.{bindings[0].partition(' =')[0]}" if bindings and not args.gin_file else "--gin_file"
        return _usage_error(f"{args.mode}: give --model_dir or {given}, not both (--model_dir reads no gin)")
    if args.mode == "export" and args.model_dir:
        return _export_one(args)
    if args.mode == "serve" and args.model_dir:
        return _serve(args, {"model_dir": args.model_dir})
    if not args.gin_file and args.mode != "inspect":
        return _usage_error("at least one --gin_file is required")
    if args.mode == "inspect" and not args.output_dir:
        return _usage_error("inspect needs --output_dir")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.mode == "aot":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for TPU, run nothing on one
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropGinSearchMisses())
    if not args.verbose:
        _quiet_tensorflow_import()

    import gin
    from musiclm_jax import configurables, gin_utils
    from musiclm_jax.data.bad_input import NoUsableExamplesError

    gin_files = list(args.gin_file)
    if args.mode == "aot":
        gin_files.insert(0, "runs/aot.gin")  # the model gin alone is enough for aot
    try:
        gin_utils.parse(gin_files, bindings)
        gin_utils.check_read_by(_entry_functions(args.mode, gin_utils), gin_files, bindings, args.mode)
        return _run_mode(args, configurables, gin_utils)
    except NoUsableExamplesError as e:  # a data problem, already counted and summarised
        return _failed(args.mode, e)
    except gin_utils.ConfigError as e:
        return _usage_error(gin_utils.first_line(e))
    except FileNotFoundError as e:  # a data file or folder named in the config
        return _usage_error(gin_utils.first_line(e))
    except (ValueError, TypeError) as e:
        # Gin reports missing %gin.REQUIRED values and unknown references when calling, and
        # tags errors raised while building a configured object with its name.
        msg = gin_utils.first_line(e)
        built = re.findall(r"In call to configurable '(\w+)'", str(e))
        if (
            "gin.REQUIRED" in str(e)
            or "Required" in msg
            or "No configurable" in msg
            or (built and built[0] not in ENTRY_FUNCTIONS)
        ):
            where = f" (building {built[0]})" if built and built[0] not in ENTRY_FUNCTIONS else ""
            return _usage_error(f"bad gin configuration{where}: {msg}")
        raise
    finally:
        gin.clear_config()


def _entry_functions(mode: str, gin_utils) -> list[str]:
    if mode == "eval" and gin_utils.is_bound("evaluate_text_to_music", "output_dir"):
        return ["evaluate_text_to_music"]
    return [MODE_ENTRY[mode]]


def _run_mode(args, configurables, gin_utils) -> int:
    from musiclm_jax.data.bad_input import NoUsableExamplesError
    from musiclm_jax.training.partitioning import DistributedSetupError, maybe_initialize_distributed
    from musiclm_jax.training.trainer import NonFiniteError

    if args.mode in ("train", "eval"):
        # Before gin builds anything: a batch size counts the devices, which starts JAX's backend.
        try:
            maybe_initialize_distributed()
        except DistributedSetupError as e:
            return _failed("multi-host start-up", e)
    if args.mode == "train":
        from musiclm_jax.train import ModelDirMismatchError, StoppedBySignal

        try:
            if args.plan:  # the summary is printed; nothing is written
                configurables.train(plan=True)
                return 0
            configurables.train(on_start=gin_utils.write_config)
        except NonFiniteError as e:
            return _failed("training stopped", e)
        except ModelDirMismatchError as e:
            return _failed("train", e)
        except StoppedBySignal as e:
            return _failed("train", e, status=SIGTERM_STATUS)
        return 0
    if args.mode == "eval":
        from musiclm_jax.training.checkpoints import CheckpointError

        try:
            if gin_utils.is_bound("evaluate_text_to_music", "output_dir"):
                from musiclm_jax.evaluation.report import REPORT_FILE

                results = configurables.evaluate_text_to_music()
                print(
                    f"text-to-music eval of {results['num_items']} captions: report in "
                    f"{os.path.join(results['output_dir'], REPORT_FILE)}"
                )
            else:
                configurables.evaluate(on_start=gin_utils.write_config)
        except CheckpointError as e:
            return _failed("eval", e)
        except ValueError as e:  # a bad eval-set size or length, an unknown embedder or classifier
            return _usage_error(f"eval: {gin_utils.first_line(e)}")
        return 0
    if args.mode == "aot":
        from musiclm_jax.aot import DoesNotFitError

        try:
            report = configurables.compile_for_topology(topology=args.topology)
        except DoesNotFitError as e:
            return _failed("aot: DoesNotFitError", e, status=3)
        except RuntimeError as e:
            return _failed("aot", e)
        print(report.table())
        return 0
    if args.mode == "inspect":
        kwargs = {"task": args.task} if args.task else {}
        try:
            summary = configurables.inspect_task(
                num_examples=args.num_examples, output_dir=args.output_dir, split=args.split, **kwargs
            )
        except ValueError as e:  # unknown task or split, bad count: the user's input
            if isinstance(e, NoUsableExamplesError):  # the data's problem: main reports it
                raise
            return _usage_error(f"inspect: {gin_utils.first_line(e)}")
        print(summary.table())
        print(f"wrote {summary.count} WAVs, spectrograms.png and summary.json to {args.output_dir}")
        return 0
    if args.mode in ("fit_mulan_rvq", "fit_melody_rvq"):
        info = getattr(configurables, args.mode)()
        what = "clips" if args.mode == "fit_mulan_rvq" else "windows"
        print(
            f"fitted a {info['levels']} x {info['codebook_size']} RVQ on {info['num_examples']} {what}; "
            f"reconstruction cosine by levels: {info['reconstruction_cosine']}"
        )
        return 0
    if args.mode == "fit_semantic_kmeans":
        info = configurables.fit_semantic_kmeans()
        held_out = info.get("held_out_mean_sq_distance", float("nan"))
        print(
            f"fitted {info['num_clusters']} clusters on layer {info['layer']}; mean squared distance "
            f"train {info['train_mean_sq_distance']:.4g}, held-out {held_out:.4g}"
        )
        return 0
    if args.mode == "precompute":
        summary = configurables.precompute_tokens()
        for split, s in summary["splits"].items():
            print(
                f"{split}: {s['clips']} clips, {s['seconds']:.1f} s of audio, tokens {s['tokens']}, "
                f"skipped {s['skipped'] or 'none'}"
            )
        print(
            f"{summary['shards_run']} shards tokenized, {summary['shards_skipped']} already done; "
            f"cache and summary.json in {summary['output_dir']}"
        )
        return 0
    if args.mode == "export":
        kwargs = {"output_dir": args.output_dir} if args.output_dir else {}
        if args.dtype:
            kwargs["dtype"] = args.dtype
        try:
            manifest = configurables.export_musiclm(**kwargs)
        except FileExistsError as e:
            return _usage_error(f"export: {e}")
        print(
            f"exported the five models, {len(manifest['samplers'])} samplers and the codec decoder for "
            f"{manifest['seconds']} s ({', '.join(manifest['platforms'])})"
        )
        return 0
    if args.mode == "generate":
        from musiclm_jax import generate as generate_lib
        from musiclm_jax.audio.io import AudioDecodeError

        kwargs = {"output_dir": args.output_dir} if args.output_dir else {}
        try:
            if args.story:
                kwargs["story"] = generate_lib.parse_story(args.story)
            if args.continue_from:
                kwargs["continue_from"] = args.continue_from
            if args.melody:
                kwargs["melody"] = args.melody
            sidecars = configurables.generate(prompts=args.prompt, prompt_file=args.prompt_file, **kwargs)
        except (ValueError, AudioDecodeError) as e:  # an empty prompt, a bad length or audio prompt, misfit stages
            return _usage_error(f"generate: {gin_utils.first_line(e)}")
        for s in sidecars:
            score = "" if s["mulan_score"] is None else f" (MuLan score {s['mulan_score']:.3f})"
            print(f"{s['file']}: {s['prompt']!r}{score}")
        return 0
    if args.mode == "serve":
        return _serve(args, {}, configurables.serve)
    if args.mode == "pipeline":
        import gin
        from musiclm_jax import pipeline, pipeline_data
        from musiclm_jax.train import StoppedBySignal

        bound = gin.query_parameter("run_pipeline.size")
        if args.size and bound != args.size:  # a user gin file set another size over --size's
            return _usage_error(f"pipeline: --size={args.size}, but a --gin_file binds run_pipeline.size = {bound!r}")
        try:
            data = {"data": args.data} if args.data else {}
            if args.from_dir:
                data["from_dir"] = args.from_dir
            if args.plan:
                data["plan"] = True
            summary = configurables.run_pipeline(
                model_dir=args.model_dir, on_start=lambda d: gin_utils.write_config(d, "pipeline_config.gin"), **data
            )
        except StoppedBySignal as e:  # the step is not marked done: the same command resumes it
            return _failed("pipeline", e, status=SIGTERM_STATUS)
        except pipeline_data.DataError as e:  # the collection cannot feed a step: said before any runs
            return _failed("pipeline", e)
        except pipeline.ReuseError as e:  # --from names a run without the steps to reuse
            return _usage_error(f"pipeline: {e}")
        if args.plan:
            print(f"pipeline plan for {summary['model_dir']}: nothing ran")
            return 0
        print(f"pipeline done; summary in {os.path.join(summary['model_dir'], 'pipeline_summary.json')}")
        return 0
    raise AssertionError(args.mode)


def _serve(args, source: dict, serve_fn=None) -> int:
    """`musiclm serve`: loads the model, then serves until Ctrl-C."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not args.verbose:
        _quiet_tensorflow_import()
    from musiclm_jax import serve
    from musiclm_jax.export import ExportError

    given = {k: getattr(args, k) for k in (*SERVE_LIMITS, "output_dir") if getattr(args, k) is not None}
    try:
        (serve_fn or serve.run_server)(**source, **given)
    except (ValueError, FileNotFoundError, ExportError) as e:  # not a model directory; a bad limit
        return _usage_error(f"serve: {str(e).strip().splitlines()[0]}")
    except OSError as e:  # the port is taken
        return _failed("serve", e)
    return 0


def _export_one(args) -> int:
    """`musiclm export --model_dir=D --output_dir=O`: one model's params-only export (no gin)."""
    if not args.output_dir:
        return _usage_error("export needs --output_dir")
    from musiclm_jax import export

    try:
        manifest = export.export_checkpoint(args.model_dir, args.output_dir, dtype=args.dtype)
    except (FileNotFoundError, FileExistsError, ValueError, TypeError) as e:
        return _usage_error(f"export: {e}")
    print(f"exported {manifest['model']} step {manifest['step']} ({manifest['dtype']}) to {args.output_dir}")
    return 0


def run() -> None:
    """Console-script entry point.

    Ends with os._exit once everything is flushed: a tf.data iterator over a Python generator
    (the raw-audio seqio tasks) can deadlock in the interpreter's final garbage collection,
    and by then every file this program writes (checkpoints, summaries, WAVs) is closed.
    """
    try:
        code = main()
    except SystemExit as e:  # argparse's usage errors
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001  (report it like Python would, then exit the same way)
        traceback.print_exc()
        code = 1
    if code in (0, SIGTERM_STATUS) and "musiclm_jax.training.partitioning" in sys.modules:
        from musiclm_jax.training.partitioning import shutdown_distributed

        shutdown_distributed()  # waits for the other hosts of a pod
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    run()
