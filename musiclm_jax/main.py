"""`musiclm <mode> --gin_file=F [--gin_file=G ...] [--gin.KEY=VALUE ...]` (the T5X shape).

Thin: parses flags and gin, then calls the keyword-only library function of the mode.
Bad configuration exits with status 2 and one line naming the culprit.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback
from typing import Optional, Sequence

ENTRY_FUNCTIONS = (
    "train",
    "evaluate",
    "evaluate_text_to_music",
    "compile_for_topology",
    "inspect_task",
    "fit_mulan_rvq",
    "fit_melody_rvq",
    "fit_semantic_kmeans",
    "precompute_tokens",
    "generate",
    "run_pipeline",
    "export_musiclm",
    "serve",
)
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="musiclm",
        allow_abbrev=False,
        description="MusicLM in JAX. Modes: " + "; ".join(f"{k}: {v}" for k, v in MODES.items()),
        epilog="Gin bindings: --gin.KEY=VALUE, e.g. --gin.MODEL_DIR=\"'/tmp/run'\" --gin.TRAIN_STEPS=100",
    )
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("--gin_file", action="append", default=[], help="gin file (path, or relative to the packaged gin/)")
    p.add_argument("--topology", default="v5e:4x4", help="aot: TPU topology, e.g. v5e:4x4, v4:2x2x2, v5p:2x2x2")
    p.add_argument("--task", help="inspect: seqio task name (else inspect_task.task from gin)")
    p.add_argument("--num_examples", type=int, default=8, help="inspect: how many examples")
    p.add_argument(
        "--output_dir",
        help="inspect: where the WAVs, spectrograms.png and summary.json go; "
        "generate: where the WAVs go (else generate.output_dir from gin); export: the new export directory; "
        "serve: where each request's uploads and results go (default ./musiclm_serve; a restart lists them again)",
    )
    p.add_argument("--prompt", action="append", default=[], help="generate: a text prompt (repeatable)")
    p.add_argument("--prompt_file", help="generate: a file of prompts, one per line")
    p.add_argument(
        "--story",
        action="append",
        default=[],
        help="generate: story mode, one piece whose text changes: 'SECONDS:TEXT' (repeatable, in order)",
    )
    p.add_argument("--continue_from", help="generate: an audio file to continue (needs W2V_BERT_DIR in gin)")
    p.add_argument(
        "--melody",
        help="generate: an audio file of a tune (hummed, whistled or played) for the music to follow "
        "(needs a semantic stage trained with melody tokens and MELODY_DIR in gin)",
    )
    p.add_argument("--split", default="train", help="inspect: train or validation")
    p.add_argument(
        "--model_dir",
        help="pipeline: where every model, the music and pipeline_summary.json go; "
        "serve: a pipeline directory or an export bundle",
    )
    p.add_argument(
        "--data",
        help="pipeline: your own collection instead of the synthetic music: a folder of audio files "
        "(captions in <name>.txt or <name>.json beside each) or a JSONL manifest",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="pipeline: print what each step would do (skip, resume, rerun, run, copy, fine-tune; model, "
        "parameters, steps, batch) and the data's clip counts, then stop without running a step",
    )
    p.add_argument(
        "--from",
        dest="from_dir",
        help="pipeline: reuse another pipeline directory's models: copy the tokenizers, fine-tune the stages "
        "(per step: --gin.run_pipeline.reuse=\"{'mulan': 'finetune'}\"; modes copy, finetune, train)",
    )
    p.add_argument(
        "--size",
        choices=("tiny", "small"),
        help="pipeline: the packaged pipeline/<size>.gin (default small), layered under any --gin_file",
    )
    p.add_argument("--dtype", help="export: cast floating parameters, e.g. bfloat16 (default: as trained)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="serve: the address to bind (127.0.0.1: this machine only; 0.0.0.0: anyone who can reach it)",
    )
    p.add_argument("--port", type=int, default=8000, help="serve: the TCP port")
    p.add_argument("--max_seconds", type=float, default=30.0, help="serve: the longest music a request may ask for")
    p.add_argument("--queue_size", type=int, default=8, help="serve: requests that may wait; more are answered 503")
    p.add_argument("--max_upload_mb", type=float, default=20.0, help="serve: the largest upload (tune or clip)")
    p.add_argument("--verbose", action="store_true", help="show library logs")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, bindings = _split_gin_flags(argv)
    except SystemExit as e:
        return int(e.code)
    args = _parser().parse_args(argv)
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
    if args.mode == "export" and args.model_dir and not args.gin_file:
        return _export_one(args)
    if args.mode == "serve" and args.model_dir and not args.gin_file:
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

    try:
        (serve_fn or serve.run_server)(
            **source,
            output_dir=args.output_dir or "musiclm_serve",
            host=args.host,
            port=args.port,
            max_seconds=args.max_seconds,
            default_seconds=min(10.0, args.max_seconds),
            queue_size=args.queue_size,
            max_upload_mb=args.max_upload_mb,
        )
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
