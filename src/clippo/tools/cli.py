"""The ``clippo`` command line: ``train``, ``eval``, ``resume``, ``presets``, the commands that
help understand a run: ``plot``, ``report`` and ``enjoy``, ``tune`` (hyperparameter search) and
``export`` (the policy as an ONNX graph).

Every hyperparameter flag is generated from :class:`clippo.config.ppo_config.PPOConfig`, so the flags, their
help and their defaults cannot drift from the config. Bad input ends with one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import math
import os
import secrets
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from clippo.config.ppo_config import CHOICES, ENV_PRESETS, PRESETS, PPOConfig
from clippo.core.errors import EnvStepError, NonFiniteError, RankFailedError, TrainingInterrupted, first_line
from clippo.tools.signals import stop_on_signals


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line on stderr (exit status 2), and a flag is
    never taken from its abbreviation (``--total`` is a typo to point out, not ``--total-steps``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _integer(text: str) -> int:
    """An integer flag's value: ``100000``, ``100_000`` or ``1e5`` (a whole number in any of them)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value.is_integer()):
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}: write e.g. 100000, 100_000 or 1e5")
    return int(value)


class _IntList(argparse.Action):
    """A list of integers written ``64 64``, ``64,64`` or ``64, 64``."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        items = [part for value in values for part in str(value).split(",") if part.strip()]
        try:
            setattr(namespace, self.dest, [_integer(item.strip()) for item in items])
        except argparse.ArgumentTypeError as exc:
            parser.error(f"argument {option_string}: {exc}")


def _suggest_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, unknown: list[str]) -> str:
    """``unrecognized arguments`` with the closest flag of the command (difflib) for each typo."""
    command = getattr(args, "command", None)
    sub = _subparsers(parser).get(command, parser) if command else parser
    flags = [flag for action in sub._actions for flag in action.option_strings if flag.startswith("--")]
    notes = []
    for arg in unknown:
        if arg.startswith("-"):
            close = difflib.get_close_matches(arg.split("=", 1)[0], flags, n=1, cutoff=0.6)
            if close:
                notes.append(f"{arg} (did you mean {close[0]}?)")
                continue
        notes.append(arg)
    return "unrecognized arguments: " + " ".join(notes)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _optional_float(text: str) -> float | None:
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: give a number or 'none'") from None


# Flags whose values are positional/command options rather than hyperparameters.
_NOT_FLAGS = {"env_id", "env_modules"}  # (env_modules: the repeatable --env-module below)


def _mapping(text: str) -> dict[str, Any]:
    """A flag's YAML/JSON mapping, e.g. ``--encoder-kwargs '{features: 256}'``."""
    # (no anchors or aliases, size-capped: one YAML reader everywhere)
    from clippo.core.safety import load_yaml

    try:
        value = load_yaml(text, "the flag's value")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a mapping: write it as YAML or JSON, e.g. '{{features: 256}}'"
        )
    return value


def _add_hyperparameter_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "hyperparameters",
        "Defaults shown are the generic ones; an env with built-in tuned values (see --preset) uses those. "
        "Explicit flags always win.",
    )
    for f in fields(PPOConfig):
        if f.name in _NOT_FLAGS:
            continue
        # (mypy cannot tell that a field without a default has a default_factory)
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[operator]
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        help_text = f"{f.metadata['help']} (default: {default})"
        if f.type == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text, **kwargs)
            continue
        if f.type == "int":
            kwargs["type"] = _integer
            kwargs["metavar"] = "N"
        elif f.type == "float":
            kwargs["type"] = float
            kwargs["metavar"] = "X"
        elif f.type == "float | None":
            kwargs["type"] = _optional_float
            kwargs["metavar"] = "X|none"
        elif f.type == "list[int]":
            kwargs["action"] = _IntList  # (64 64, or 64,64)
            kwargs["nargs"] = "*"  # (none: an empty list, e.g. --head-sizes with no widths)
            kwargs["metavar"] = "N"
        elif f.type == "dict":
            kwargs["type"] = _mapping
            kwargs["metavar"] = "YAML"
        if f.name in CHOICES:
            kwargs["choices"] = CHOICES[f.name]
        group.add_argument(flag, help=help_text, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="clippo", description="Proximal Policy Optimization for Gymnasium environments.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    from clippo.core.version import __version__

    parser.add_argument("--version", action="version", version=f"clippo {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)

    train = commands.add_parser(
        "train",
        help="train an agent on a Gymnasium env",
        description="Train PPO on ENV_ID. Presets: "
        + ", ".join(PRESETS)
        + ". Envs with built-in tuned values: "
        + ", ".join(ENV_PRESETS)
        + ". The values of each are documented in docs/presets.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_argument(
        "env_id",
        metavar="ENV_ID",
        help="Gymnasium environment id, e.g. CartPole-v1; module:EnvId imports module first (your own env)",
    )
    train.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="hyperparameter preset (default: the env's built-in tuned values if any, else 'default')",
    )
    train.add_argument("--config", metavar="FILE", default=None, help="YAML, TOML or JSON file of hyperparameters")
    train.add_argument(
        "--run-dir",
        metavar="DIR",
        default=None,
        help="where config, metrics, TensorBoard logs and checkpoints go (default: runs/ENV_ID-seedS-TIME)",
    )
    _add_progress_and_nproc(train, "train on N local processes (each with its own envs; steps count over all)")
    _add_hyperparameter_flags(train)

    evaluate = commands.add_parser(
        "eval", help="evaluate a trained agent", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    evaluate.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT", help="a run directory or a checkpoint file")
    _add_episode_flags(evaluate, episodes=20, seed_help="seed of the evaluation envs")
    evaluate.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    evaluate.add_argument(
        "--opponent",
        default="random",
        metavar="random|RUN_DIR|CHECKPOINT",
        help="two-player games: whom the agent plays, in both seats",
    )
    resume = commands.add_parser(
        "resume",
        help="continue an interrupted run to its --total-steps, or extend a run with --total-steps N",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    resume.add_argument("run_dir", metavar="RUN_DIR", help="the run directory of `clippo train`")
    resume.add_argument(
        "--total-steps",
        type=_integer,
        default=None,
        metavar="N",
        help="train the run to N environment steps in all (more than it has: extends a finished run); "
        "default: its own total_steps",
    )
    _add_progress_and_nproc(
        resume, "continue on N local processes: as many as the run trained on (the checkpoint records them)"
    )

    commands.add_parser("presets", help="print every preset's values as Markdown (docs/presets.md)")
    _add_understanding_commands(commands)
    play = commands.add_parser(
        "play",
        help="play a two-player game against a trained agent in the terminal",
        description="Play a game of a self-play run against its agent: the board is printed, moves are typed as "
        "action numbers, illegal moves are refused with a message.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    play.add_argument("path", metavar="RUN_DIR", help="a run directory or a checkpoint file of a two-player game")
    play.add_argument("--seat", type=int, choices=[0, 1], default=0, help="your seat: 0 moves first")
    play.add_argument("--seed", type=int, default=None, help="seed of the game's reset")
    _add_tune_command(commands)
    _add_export_command(commands)
    for name in ("eval", "enjoy", "export", "resume", "play"):  # the commands that rebuild a model from a checkpoint
        commands.choices[name].add_argument(
            "--encoder",
            default=None,
            metavar="MODULE:CLASS",
            help="the user encoder (a torch.nn.Module class) to rebuild the agent with, instead of importing the name "
            "the checkpoint records (which needs --trust-code)",
        )
    for name in ENV_MODULE_COMMANDS:
        commands.choices[name].add_argument(
            "--env-module",
            dest="env_modules",
            action="append",
            metavar="MODULE",
            default=argparse.SUPPRESS if name == "train" else [],
            help="import this Python module first (repeatable): it registers your own envs with Gymnasium. A run "
            "records it; commands on that run import it again, with --trust-code or when you name it here",
        )
    for name in TRUST_COMMANDS:  # every command that loads a run or checkpoint, or reads a config file
        commands.choices[name].add_argument(
            "--trust-code",
            action="store_true",
            default=False,
            help="import what the checkpoint, run directory or config file names (a user encoder module:Class, an "
            "env module): only for files you trust; without it clippo reads them as data (docs/trust.md)",
        )
    for command in commands.choices.values():  # --debug after the command name too, on every command
        if not any("--debug" in action.option_strings for action in command._actions):
            command.add_argument(
                "--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors"
            )
    return parser


#: the commands that take ``--env-module`` (the user's own env modules)
ENV_MODULE_COMMANDS = ("train", "tune", "eval", "resume", "report", "enjoy", "export")


def _add_progress_and_nproc(command: argparse.ArgumentParser, nproc_help: str) -> None:
    """``--progress`` and ``--nproc``: the flags of the commands that train (train, resume)."""
    command.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live progress bar (default: when stderr is a terminal)",
    )
    command.add_argument("--nproc", type=_integer, default=1, metavar="N", help=nproc_help)


#: the commands that take ``--trust-code`` (clippo.core.safety)
TRUST_COMMANDS = ("train", "eval", "resume", "report", "plot", "enjoy", "tune", "export", "play")


def _add_export_command(commands) -> None:
    """``export``: it only parses here; the work is in clippo.tools.export (onnx imported there)."""
    export = commands.add_parser(
        "export",
        help="write the deterministic policy as an ONNX graph (needs clippo[export])",
        description="Write the run's deterministic policy, observation normalization included, as an ONNX graph: "
        "raw observations in (one input per field of a Dict observation), env actions out, dynamic batch axis. "
        "Before writing, onnxruntime runs it on observations of the run's env and its actions are compared with "
        "agent.act(obs, deterministic=True): identical discrete actions, continuous ones within 1e-5.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    export.add_argument("path", metavar="RUN_DIR", help="a run directory or a checkpoint file")
    export.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="FILE",
        help="the ONNX file to write (default: policy.onnx in the run directory)",
    )
    export.add_argument("--check-steps", type=_integer, default=256, metavar="N", help="env steps of the check")
    export.add_argument(
        "--check-envs", type=_integer, default=4, metavar="N", help="envs stepped side by side in the check"
    )
    export.add_argument("--seed", type=_integer, default=0, help="seed of the check's envs")
    export.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def _add_tune_command(commands) -> None:
    """``tune``: it only parses here; the work is in clippo.tools.tuning (Optuna imported there)."""
    tune = commands.add_parser(
        "tune",
        help="search hyperparameters with Optuna (needs clippo[tune])",
        description="Run an Optuna study on ENV_ID: TPE sampler, median pruner on the periodic evaluations; each "
        "trial trains for --steps-per-trial steps from the env's preset (and --config) with sampled hyperparameters. "
        "The objective is the mean of a trial's deterministic evaluation returns. Re-running the same command "
        "continues the study in its storage. Writes OUT/STUDY_NAME/best_config.yaml (for clippo train --config), "
        "OUT/STUDY_NAME/summary.md, Optuna's plots and the trials' run directories (OUT/STUDY_NAME/trials): a folder "
        "per study, nothing of another study touched. Search space: docs/tuning.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    tune.add_argument(
        "env_id",
        metavar="ENV_ID",
        help="Gymnasium environment id, e.g. CartPole-v1, or a PettingZoo module path, e.g. mpe2.simple_spread_v3",
    )
    tune.add_argument(
        "--trials",
        type=_integer,
        required=True,
        metavar="N",
        help="finished (complete or pruned) trials the study should hold; a re-run continues to N",
    )
    tune.add_argument("--jobs", type=_integer, default=1, metavar="J", help="worker processes on the same storage")
    tune.add_argument(
        "--steps-per-trial",
        type=_integer,
        default=None,
        metavar="S",
        help="environment steps each trial trains for; None: the base config's total_steps",
    )
    tune.add_argument(
        "--eval-every",
        type=_integer,
        default=None,
        metavar="N",
        help="environment steps between a trial's evaluations; None: a tenth of --steps-per-trial",
    )
    tune.add_argument("--eval-episodes", type=_integer, default=5, metavar="K", help="episodes of each evaluation")
    tune.add_argument(
        "--storage", default=None, metavar="URL", help="Optuna storage shared by the jobs; None: sqlite:///OUT/study.db"
    )
    tune.add_argument("--study-name", default=None, metavar="NAME", help="study name; None: clippo-ENV_ID")
    tune.add_argument("--out", default=None, metavar="DIR", help="output directory; None: tune/ENV_ID")
    tune.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="YAML, TOML or JSON file of hyperparameters on top of the env's preset; those it sets are not searched",
    )
    tune.add_argument("--seed", type=_integer, default=0, help="training seed of every trial")
    tune.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw Optuna's plots into OUT (needs matplotlib)",
    )


def _add_understanding_commands(commands) -> None:
    """``plot``, ``report`` and ``enjoy``: they only parse here; the work is in clippo.tools.plotting,
    clippo.tools.report and clippo.tools.playback."""
    from clippo.tools.plotting import BANDS, X_CHOICES  # numpy only: cheap to import

    plot = commands.add_parser(
        "plot",
        help="learning curves of one or more runs (seeds of one config are averaged)",
        description="Return against environment steps and/or wall time from each run's metrics.csv. Runs whose "
        "config.yaml differ only by seed are drawn as their mean with a band; runs of different envs get a row each.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of `clippo train`")
    plot.add_argument(
        "-o", "--output", default="curves.png", metavar="FILE", help="image to write (.png, .pdf or .svg)"
    )
    plot.add_argument(
        "--x", choices=X_CHOICES, default="both", help="x axis: env steps, training wall time, or a panel each"
    )
    plot.add_argument(
        "--diagnostics",
        action="store_true",
        help="add a panel per diagnostic: approx KL, clip fraction, entropy, explained variance, value loss",
    )
    plot.add_argument(
        "--band",
        choices=list(BANDS),
        default="ci95",
        help="band around the mean of several seeds: 95%% confidence interval of the mean, or min-max",
    )

    report = commands.add_parser(
        "report",
        help="one-page summary of a run with health warnings and suggested fixes, or of several seeds of one config",
        description="One run: config, final and best return, throughput, and health checks (thresholds in "
        "docs/tuning.md); Markdown (with the figure in a PNG beside it) or self-contained HTML, by the suffix of -o. "
        "Several runs (seeds of one config): each seed's final deterministic evaluation (eval.json), the success "
        "count (with --threshold), median, worst seed, and the interquartile mean with a bootstrap confidence "
        "interval; Markdown on stdout or in -o.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of `clippo train`")
    report.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="FILE",
        help="report.md or report.html (default: RUN_DIR/report.md for one run, stdout for several)",
    )
    report.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="X",
        help="several runs: a seed succeeds when its final return is >= X (e.g. 475 for CartPole-v1)",
    )
    report.add_argument(
        "--confidence", type=float, default=0.95, metavar="P", help="several runs: the IQM interval's coverage"
    )

    enjoy = commands.add_parser(
        "enjoy",
        help="watch a trained agent: per-episode returns, optionally a video",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    enjoy.add_argument("path", metavar="RUN_DIR", help="a run directory or a checkpoint file")
    enjoy.add_argument(
        "--video",
        default=None,
        metavar="FILE.mp4",
        help="record the episodes into this MP4 (rgb_array rendering, no display; needs clippo[video])",
    )
    _add_episode_flags(enjoy, episodes=3, seed_help="seed of the first episode (default: random)")


def _add_episode_flags(parser: argparse.ArgumentParser, episodes: int, seed_help: str) -> None:
    """The flags of the commands that run a trained agent (``eval`` and ``enjoy``)."""
    parser.add_argument("--episodes", type=_integer, default=episodes, help="number of whole episodes")
    parser.add_argument("--seed", type=_integer, default=None, help=seed_help)
    parser.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="act with the policy's mode (--no-deterministic or --stochastic samples)",
    )
    parser.add_argument("--stochastic", dest="deterministic", action="store_false", help="sample actions")


def _plot(args: argparse.Namespace) -> int:
    from clippo.tools.plotting import plot_runs

    path = plot_runs(
        args.run_dirs, args.output, x=args.x, diagnostics=args.diagnostics, band=args.band, trust_code=args.trust_code
    )
    print(f"wrote {path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from clippo.tools.report import write_report

    if len(args.run_dirs) > 1 or args.threshold is not None:
        return _report_seeds(args)
    (run_dir,) = args.run_dirs
    output = Path(args.output) if args.output else Path(run_dir) / "report.md"
    report = write_report(run_dir, output, trust_code=args.trust_code, env_modules=args.env_modules)
    print(f"wrote {output}" + (f" and {report.figure_path}" if report.figure_path else ""))
    if report.warnings:
        for warning in report.warnings:
            print(f"warning: {warning.title}")
    else:
        print("no health warnings")
    return 0


def _report_seeds(args: argparse.Namespace) -> int:
    """Several runs of one config: per-seed final returns, success count, IQM with its interval."""
    from clippo.tools.aggregate import seeds_markdown

    if not 0.0 < args.confidence < 1.0:
        raise ValueError(f"--confidence={args.confidence} is invalid: it must lie strictly between 0 and 1")
    if args.output and not args.output.endswith(".md"):
        raise ValueError(f"--output={args.output!r} is invalid: a report over seeds is Markdown (give FILE.md)")
    text = seeds_markdown(args.run_dirs, threshold=args.threshold, confidence=args.confidence)
    if args.output:
        from clippo.core.safety import write_file

        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_file(Path(args.output), text)  # (atomically, never through a link)
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def _enjoy(args: argparse.Namespace) -> int:
    from clippo.tools.playback import play

    if args.episodes < 1:
        raise ValueError(f"--episodes={args.episodes} is invalid: it must be an integer >= 1")
    result = play(
        args.path,
        episodes=args.episodes,
        seed=args.seed,
        deterministic=args.deterministic,
        video=args.video,
        encoder=args.encoder,
        trust_code=args.trust_code,
        env_modules=args.env_modules,
    )
    for index, (ret, length) in enumerate(zip(result.returns, result.lengths, strict=False), start=1):
        print(f"episode {index}: return {ret:.2f}, length {length}")
    mode = "deterministic" if args.deterministic else "stochastic"
    print(f"{result.env_id}: mean return {result.mean_return:.2f} over {len(result.returns)} episodes ({mode})")
    if result.video_path is not None:
        print(f"video: {result.video_path}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from clippo.tools.tuning import TuneSettings, tune

    return tune(
        TuneSettings(
            env_id=args.env_id,
            trials=args.trials,
            jobs=args.jobs,
            steps_per_trial=args.steps_per_trial,
            eval_every=args.eval_every,
            eval_episodes=args.eval_episodes,
            storage=args.storage,
            study_name=args.study_name,
            out=args.out,
            config_file=args.config,
            seed=args.seed,
            plots=args.plots,
            trust_code=args.trust_code,
            env_modules=args.env_modules,
        )
    )


def _export(args: argparse.Namespace) -> int:
    from clippo.agent import PPO
    from clippo.tools.export import describe, export_onnx, require_onnx

    require_onnx()  # before loading the agent: a missing extra is the first thing to say
    for flag, value in (("--check-steps", args.check_steps), ("--check-envs", args.check_envs)):
        if value < 1:
            raise ValueError(f"{flag}={value} is invalid: it must be an integer >= 1")
    path = Path(args.path)
    output = Path(args.output) if args.output else (path if path.is_dir() else path.parent) / "policy.onnx"
    agent = PPO.load(path, encoder=args.encoder, trust_code=args.trust_code, env_modules=args.env_modules)
    if hasattr(agent, "learners"):  # a multi-agent run: one graph per policy group
        from clippo.tools.export import export_policies

        results = export_policies(
            agent, output, check_steps=args.check_steps, check_envs=args.check_envs, seed=args.seed
        )
        if args.json:
            print(json.dumps({name: result.to_dict() for name, result in results.items()}))
        else:
            print("\n".join(f"policy group {name}: {describe(result)}" for name, result in results.items()))
        return 0
    result = export_onnx(agent, output, check_steps=args.check_steps, check_envs=args.check_envs, seed=args.seed)
    print(json.dumps(result.to_dict()) if args.json else describe(result))
    return 0


def _play(args: argparse.Namespace) -> int:
    from clippo.agent import PPO
    from clippo.multiagent.agent import MultiAgentPPO
    from clippo.multiagent.play import play_human

    agent = PPO.load(args.path, encoder=args.encoder, trust_code=args.trust_code)
    if not isinstance(agent, MultiAgentPPO) or agent.selfplay is None:
        raise ValueError(f"clippo play is for two-player games (self-play runs); {agent.config.env_id!r} is not one")
    try:
        play_human(agent, args.seat, args.seed)
    except EOFError:
        print("clippo: input ended: game abandoned", file=sys.stderr)
        return 1
    return 0


def _presets(args: argparse.Namespace) -> int:
    from clippo.config.ppo_config import presets_markdown

    print(presets_markdown(), end="")
    return 0


def _train(args: argparse.Namespace) -> int:
    if args.nproc > 1:
        return _launch_local(args.nproc)
    from clippo.agent import PPO  # deferred: torch is slow to import and --help should not wait for it
    from clippo.envs.families import split_env_id

    known = {f.name for f in fields(PPOConfig)}
    overrides = {name: value for name, value in vars(args).items() if name in known}
    seed = overrides.get("seed", 0)
    # (a module:EnvId's module is in config.yaml, not in the folder's name)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(split_env_id(args.env_id)[1], seed)
    agent = PPO(
        args.env_id,
        preset=args.preset,
        config_file=args.config,
        run_dir=run_dir,
        trust_code=args.trust_code,
        **overrides,
    )
    try:
        # The envs' first reset: what only running envs can refuse (episodic_life without lives, say)
        # is refused before the run directory and runs/latest exist.
        agent.env_runner()
    except BaseException:
        agent.close()
        raise
    with contextlib.ExitStack() as held:
        held.callback(agent.close)
        if agent.world.is_main:
            # the run directory is this process's before anything is written into it
            run_dir = held.enter_context(claim_run_dir(run_dir, default=args.run_dir is None))
            agent.run_dir = run_dir
        return _train_claimed(args, agent, run_dir)


def default_run_dir(env_id: str, seed: int) -> Path:
    """``runs/ENV_ID-seedS-TIME-XXXXXX``: the random suffix keeps runs started in the same second
    apart (``claim_run_dir`` creates it exclusively all the same)."""
    return Path(f"runs/{env_id}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}")


#: files that mean a run directory already holds a run
_RUN_FILES = ("config.yaml", "metrics.csv", "agent.pt")


@contextlib.contextmanager
def claim_run_dir(run_dir: Path, default: bool) -> Iterator[Path]:
    """Hold ``run_dir`` for this process (``checkpoint.run_dir_lock``) from before its first file
    to the end of training. A default name is created exclusively (another one is drawn if it
    exists); a given one must not hold a run yet (checked under the lock, so two processes
    started together cannot both pass)."""
    from clippo.core.safety import check_run_dir
    from clippo.training.checkpoint import run_dir_lock

    if default:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                run_dir = run_dir.with_name(run_dir.name.rsplit("-", 1)[0] + f"-{secrets.token_hex(3)}")
    check_run_dir(run_dir)
    with run_dir_lock(run_dir, create=True):
        held = [name for name in _RUN_FILES if (run_dir / name).exists()]
        if held:
            raise ValueError(
                f"run directory {str(run_dir)!r} already holds a run ({held[0]}): choose another --run-dir, "
                f"or continue it with: clippo resume {run_dir}"
            )
        yield run_dir


def _train_claimed(args: argparse.Namespace, agent, run_dir: Path) -> int:
    from clippo.config.ppo_config import save_config

    main_rank = agent.world.is_main
    if main_rank:
        if args.run_dir is None:
            _point_latest_at(run_dir)
        save_config(agent.config, run_dir / "config.yaml")
    callback = _eval_callback(agent)
    with stop_on_signals(agent):
        if main_rank:  # (printed once the handlers are in place: from this line on, Ctrl-C stops cleanly)
            ranks = f" on {agent.world.size} processes" if agent.world.distributed else ""
            bf16 = " in bf16" if agent.precision == "bf16" else ""
            print(
                f"training {args.env_id} for {agent.config.total_steps} steps{ranks}{bf16}; run directory: {run_dir}",
                flush=True,
            )
        try:
            agent.learn(progress=args.progress if main_rank else False, callback=callback)
        finally:
            agent.close()
    return _finish(agent, run_dir, callback)


def _eval_callback(agent):
    """The periodic evaluation the run's config asks for (``--eval-every``), or None. Only rank 0
    evaluates; a stop it asks for reaches the other ranks in the next after-rollout exchange."""
    from clippo.training.callbacks import EvalCallback

    return EvalCallback.from_config(agent.config)


def _launch_local(nproc: int) -> int:
    """``clippo train|resume ... --nproc N``: the same command in N local processes (``launch_local``)."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):  # drop --nproc N / --nproc=N
        if arg == "--nproc":
            del argv[i : i + 2]
            break
        if arg.startswith("--nproc="):
            del argv[i]
            break
    from clippo.training.distributed import launch_local

    # Not torchrun --standalone: its TCP store listens on every interface, unauthenticated
    # (clippo.training.distributed.launch_local meets in a private file store instead; docs/trust.md).
    return launch_local(nproc, argv)


def _resume(args: argparse.Namespace) -> int:
    from clippo.core.safety import check_run_dir
    from clippo.training.checkpoint import run_dir_lock

    if args.nproc > 1:
        return _launch_local(args.nproc)
    run_dir = Path(args.run_dir)
    check_run_dir(run_dir)  # a link where clippo writes (the lock first): refused before anything is opened
    if os.environ.get("RANK", "0") != "0":  # (rank 0 holds the run directory and writes into it)
        return _resume_locked(args, run_dir)
    with run_dir_lock(run_dir):  # before anything is truncated: the run may still be training elsewhere
        return _resume_locked(args, run_dir)


def _resume_locked(args: argparse.Namespace, run_dir: Path) -> int:
    from clippo.agent import PPO
    from clippo.training.logger import truncate_metrics

    agent = PPO.from_run(run_dir, encoder=args.encoder, trust_code=args.trust_code, env_modules=args.env_modules)
    if args.total_steps is not None:
        _extend(agent, run_dir, args.total_steps)
    if agent.finished:
        raise ValueError(
            f"run {str(run_dir)!r} is already complete ({agent.global_step} steps): nothing to resume; "
            f"train it further with: clippo resume {run_dir} --total-steps N (N > {agent.global_step})"
        )
    from clippo.training.callbacks import stop_reached

    reached = stop_reached(run_dir, agent.config, agent.global_step)
    if reached is not None:
        raise ValueError(
            f"run {str(run_dir)!r} already stopped at step {reached['global_step']}: its evaluation reached "
            f"{reached['mean_return']:.2f} >= stop_at_return={agent.config.stop_at_return:g}; nothing to resume"
        )
    if agent.world.is_main:
        truncate_metrics(run_dir, agent.global_step, getattr(agent, "metrics_columns", None))
    callback = _eval_callback(agent)
    with stop_on_signals(agent):
        try:
            agent.env_runner()
            how = "exactly (envs restored)" if agent.envs_restored else "with freshly reset envs"
            if agent.envs_restored and agent.world.distributed:
                how = "with rank 0's envs restored (the other ranks' envs reset afresh)"
            if agent.envs_fresh_reason and agent.world.is_main:
                how += f": {agent.envs_fresh_reason}"
            if agent.saved_precision not in (None, agent.precision):  # (precision=auto on other hardware)
                how += f"; in {agent.precision}, not the {agent.saved_precision} it trained in"
            ranks = f" on {agent.world.size} processes" if agent.world.distributed else ""
            if agent.world.is_main:
                print(f"resuming {agent.config.env_id} at step {agent.global_step}{ranks} {how}", flush=True)
            agent.resume(progress=args.progress, callback=callback)
        finally:
            agent.close()
    return _finish(agent, run_dir, callback)


def _extend(agent, run_dir: Path, total_steps: int) -> None:
    """``resume --total-steps N``: the run's learn() call now ends at N steps in all (a finished
    run trains further; the learning rate anneals over the longer span), recorded in config.yaml."""
    from clippo.config.ppo_config import save_config

    if total_steps <= agent.global_step:
        raise ValueError(
            f"--total-steps={total_steps} is invalid: run {str(run_dir)!r} is already at step {agent.global_step}; "
            "give a larger total"
        )
    agent.schedule_end = total_steps
    agent.config.total_steps = total_steps
    if agent.world.is_main:
        save_config(agent.config, run_dir / "config.yaml")


def _finish(agent, run_dir: Path, callback=None) -> int:
    from clippo.training.distributed import shutdown

    shutdown(agent.world)
    if not agent.world.is_main:
        return 0
    if callback is not None and callback.reached is not None:
        print(
            f"stopped at step {callback.reached['global_step']}: evaluation {callback.reached['mean_return']:.2f} "
            f">= stop_at_return {agent.config.stop_at_return:g}",
            flush=True,
        )
    if callback is not None and callback.best is not None:
        print(
            f"best periodic evaluation: mean return {callback.best['mean_return']:.2f} at step "
            f"{callback.best['global_step']}, saved as {run_dir / 'best.pt'}",
            flush=True,
        )
    if agent.config.eval_episodes:
        result = agent.evaluate(episodes=agent.config.eval_episodes, seed=agent.config.seed + 10_000)
        from clippo.core.safety import write_file

        write_file(run_dir / "eval.json", json.dumps(_public(result), indent=2) + "\n")
        print(
            f"evaluation over {result['episodes']} episodes (deterministic): "
            f"mean return {result['mean_return']:.2f} +- {result['std_return']:.2f}"
            + (
                f"; against a random player: win {result['win']:.1%}, draw {result['draw']:.1%}, loss "
                f"{result['loss']:.1%}"
                if "win" in result
                else ""
            ),
            flush=True,
        )
    print(f"saved {run_dir / 'agent.pt'}; evaluate with: clippo eval {run_dir}", flush=True)
    return 0


def _point_latest_at(run_dir: Path) -> None:
    """Make runs/latest a symlink to the newest default run directory (replaced atomically)."""
    latest = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, latest)


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("mean_return", "std_return", "episodes", "mean_length", "returns")}


def _eval(args: argparse.Namespace) -> int:
    from clippo.agent import PPO
    from clippo.multiagent.agent import MultiAgentPPO

    if args.episodes < 1:
        raise ValueError(f"--episodes={args.episodes} is invalid: it must be an integer >= 1")
    agent = PPO.load(args.path, encoder=args.encoder, trust_code=args.trust_code, env_modules=args.env_modules)
    if args.opponent != "random":
        if not isinstance(agent, MultiAgentPPO) or agent.selfplay is None:
            raise ValueError(f"--opponent is for two-player games; {agent.config.env_id!r} is not one")
        result = agent.play_against(args.opponent, args.episodes, seed=args.seed, deterministic=args.deterministic)
    else:
        result = agent.evaluate(episodes=args.episodes, seed=args.seed, deterministic=args.deterministic)
    if args.json:
        extra = {k: result[k] for k in ("agent_returns", "win", "draw", "loss", "per_seat") if k in result}
        print(json.dumps({**_public(result), **extra}))
    elif "win" in result:  # a two-player game: against a uniformly random player, both seats
        mode = "deterministic" if args.deterministic else "stochastic"
        print(
            f"{agent.config.env_id}: against {'a random player' if args.opponent == 'random' else args.opponent} "
            f"over {result['episodes']} games ({mode}): "
            f"win {result['win']:.1%}, draw {result['draw']:.1%}, loss {result['loss']:.1%}"
        )
    else:
        mode = "deterministic" if args.deterministic else "stochastic"
        print(
            f"{agent.config.env_id}: mean return {result['mean_return']:.2f} +- {result['std_return']:.2f} "
            f"over {result['episodes']} episodes ({mode}), mean length {result['mean_length']:.1f}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # (argparse's own message, with the closest flag for each typo)
        parser.error(_suggest_flags(parser, args, unknown))
    debug = getattr(args, "debug", False)
    if not debug:
        # Gymnasium's async vector env prints a failing worker's traceback as warnings before
        # raising; the error line below already names the exception (--debug shows it all).
        warnings.filterwarnings(
            "ignore", message=r"(?s).*ERROR: (Received the following error from Worker|Traceback|Raising the last)"
        )
    handlers = {
        "train": _train,
        "eval": _eval,
        "resume": _resume,
        "presets": _presets,
        "play": _play,
        "plot": _plot,
        "report": _report,
        "enjoy": _enjoy,
        "tune": _tune,
        "export": _export,
    }
    try:
        return handlers[args.command](args)
    except TrainingInterrupted as exc:
        print(f"clippo: {exc}", file=sys.stderr)
        return 143 if exc.signum == signal.SIGTERM else 130
    except KeyboardInterrupt:
        print("clippo: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, EnvStepError, NonFiniteError, RankFailedError) as exc:
        if debug:
            raise
        message = first_line(exc)
        print(f"clippo: error: {message}", file=sys.stderr)
        return 2
