"""Hyperparameter search with Optuna: what ``clippo tune`` runs.

A *trial* trains one agent for ``steps_per_trial`` environment steps with hyperparameters drawn
from :data:`SEARCH_SPACE` on top of the base config (the env's preset, ``--config``, clippo's
defaults; a hyperparameter the ``--config`` file sets is fixed, not searched), seed ``--seed``, and
evaluates its deterministic policy every ``eval_every`` steps (:class:`clippo.training.callbacks.EvalCallback`:
``eval_episodes`` episodes on separate envs, the same evaluation seeds in every trial).

*Objective* (maximized): the mean of a trial's evaluation returns, one per multiple of
``eval_every`` steps: the area under its evaluation curve divided by its length. A trial scores
high when it learns early and stays good; a config that solves late scores lower than one that
solves early, and one that solves and then collapses loses the points after the collapse. (Steps
to a threshold was not used: it is undefined for trials that never reach it, and says nothing
about staying there.) The running mean is reported after each evaluation, so the last report is
the objective.

*Sampler and pruner:* Optuna's TPE sampler (random for the first 10 trials), and a median pruner
fed with that running mean: from evaluation n // 3 of a trial's n on (the 3rd of 10), once 5 trials
have finished, a trial whose best running mean so far is below the median of the finished trials'
at the same evaluation is stopped.
A trial whose training stops on a non-finite value counts as pruned.

*Resuming:* trials live in the storage (an SQLite file by default, inside ``--out``). ``--trials
N`` is the number of finished (complete or pruned) trials the study should hold: running the
same command again continues the study to N and never loses finished trials; raise N to add
more. A trial whose process was killed stops sending heartbeats; after a grace period
(``GRACE_PERIOD`` seconds) the next worker to look marks it failed and runs it again once with the
same hyperparameters (one killed before its first heartbeat stays RUNNING in the storage, and is
not counted).

*Files:* each study writes into a folder of its own, ``OUT/STUDY_NAME`` (``study_dir``): its trials'
run directories (``trials/trial-NNNN``, each created exclusively), ``best_config.yaml``,
``summary.md`` and the plots. Studies sharing an ``--out`` (and its storage) never touch each
other's files, and nothing of a study is ever deleted.

*Parallel jobs:* ``--jobs J`` starts J worker processes (one torch thread each) on the same
storage; each starts a trial while fewer than N are finished, so the study may end with up to
J - 1 more. Several machines share a study by running the same command against one storage they
all reach.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from clippo.config.ppo_config import BOOKKEEPING_KEYS
from clippo.core.errors import EnvStepError, NonFiniteError, first_line
from clippo.training.callbacks import EVAL_MEAN, Callback, EvalCallback

# ---------------------------------------------------------------------------------------------
# The search space: (kind, values). Kinds: "log" a float log-uniform in [low, high]; "int" an
# integer uniform in [low, high]; "intlog" an integer log-uniform in [low, high]; "choice" one of
# the values. Names are PPOConfig fields (hidden_sizes choices are written "64x64").
# ---------------------------------------------------------------------------------------------
SEARCH_SPACE: dict[str, tuple[str, tuple]] = {
    # The step size matters over orders of magnitude.
    "learning_rate": ("log", (1e-5, 1e-2)),
    # Rollout length per env; only the values whose batch (num_envs * num_steps) fits in one
    # evaluation interval are offered, so every trial is evaluated at every multiple.
    "num_steps": ("choice", (8, 16, 32, 64, 128, 256, 512, 1024, 2048)),
    # Minibatches per epoch, capped at the batch size (at least one sample per minibatch).
    "num_minibatches": ("intlog", (1, 64)),
    "update_epochs": ("int", (1, 20)),
    # Horizons from 10 to 1000 steps.
    "gamma": ("choice", (0.9, 0.95, 0.98, 0.99, 0.995, 0.999)),
    "gae_lambda": ("choice", (0.8, 0.9, 0.92, 0.95, 0.98, 0.99, 1.0)),
    "clip_epsilon": ("choice", (0.1, 0.2, 0.3, 0.4)),
    # From negligible to strong; log-uniform, so 0 itself is not drawn.
    "ent_coef": ("log", (1e-8, 0.1)),
    "hidden_sizes": ("choice", ("32x32", "64x64", "128x128", "256x256")),
    "activation": ("choice", ("tanh", "relu")),
}

#: A killed trial's heartbeat stops; it is marked failed (and retried) after this many seconds.
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 30
DEFAULT_EVAL_EPISODES = 5
#: Evaluations per trial when --eval-every is not given.
DEFAULT_EVALUATIONS = 10
# Config keys left out of the best config file: they do not change what is learned (the seed is
# the user's choice), and the trials' own bookkeeping (no TensorBoard, no periodic checkpoints).
_NOT_WRITTEN = {
    "env_id",
    "seed",
    "stop_at_return",
    "env_modules",  # (named on the train command line: a config file's modules would need --trust-code)
    *BOOKKEEPING_KEYS,
}


def require_optuna():
    """The optuna module, or a one-line error saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise ValueError("clippo tune needs optuna: pip install 'clippo[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # clippo prints one line per trial itself
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


@dataclasses.dataclass
class TuneSettings:
    """What ``clippo tune`` was asked for; ``None`` fields get their defaults in :meth:`resolved`."""

    env_id: str
    trials: int
    jobs: int = 1
    steps_per_trial: int | None = None  # default: the base config's total_steps
    eval_every: int | None = None  # default: steps_per_trial // DEFAULT_EVALUATIONS
    eval_episodes: int = DEFAULT_EVAL_EPISODES
    storage: str | None = None  # default: sqlite:///OUT/study.db
    study_name: str | None = None  # default: clippo-ENV_ID
    out: str | None = None  # default: tune/ENV_ID
    config_file: str | None = None
    seed: int = 0
    plots: bool = True
    #: import an encoder the --config file (or the study's stored config) names (clippo.core.safety)
    trust_code: bool = False
    #: modules that register the user's own envs, imported before env_id is looked up (--env-module)
    env_modules: list[str] = dataclasses.field(default_factory=list)

    @property
    def study_dir(self) -> Path:
        """Where this study's files go: ``OUT/STUDY_NAME`` (trials, best_config.yaml, summary.md,
        plots), so that studies sharing an ``--out`` (and its storage) never touch each other's."""
        out = self.out or str(Path("tune") / self.env_id)
        return Path(out) / study_folder_name(self.study_name or f"clippo-{self.env_id}")

    def resolved(self) -> ResolvedTuneSettings:
        """The settings with defaults filled in, checked: one-line ValueError naming a bad value."""
        from clippo.config.ppo_config import resolve_config
        from clippo.envs.families import check_env_id

        for name in ("trials", "jobs", "eval_episodes"):
            _check_positive(name, getattr(self, name))
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed={self.seed} is invalid: it must be an integer in [0, 2**32)")
        multiagent = not self.env_modules and _is_multiagent(self.env_id)
        if not multiagent:
            check_env_id(self.env_id, self.env_modules)
        base = resolve_config(
            self.env_id, config_file=self.config_file, trust_code=self.trust_code, overrides=self._modules()
        )
        steps = self.steps_per_trial if self.steps_per_trial is not None else base.total_steps
        _check_positive("steps-per-trial", steps)
        every = self.eval_every if self.eval_every is not None else max(steps // DEFAULT_EVALUATIONS, 1)
        _check_positive("eval-every", every)
        if every > steps:
            raise ValueError(f"--eval-every={every} is invalid: it must be at most --steps-per-trial={steps}")
        out = self.out or str(Path("tune") / self.env_id.rpartition(":")[2])
        storage = self.storage or f"sqlite:///{Path(out) / 'study.db'}"
        return ResolvedTuneSettings(
            **{
                **dataclasses.asdict(self),
                "steps_per_trial": steps,
                "eval_every": every,
                "out": out,
                "storage": storage,
                "study_name": self.study_name or f"clippo-{self.env_id}",
                "agents_per_step": _agents_per_step(self.env_id, base.env_kwargs) if multiagent else 1,
            }
        )

    def _modules(self) -> dict[str, Any]:
        """``env_modules`` as config overrides (none when empty: a config file's own then stand)."""
        return {"env_modules": list(self.env_modules)} if self.env_modules else {}


@dataclasses.dataclass(kw_only=True)
class ResolvedTuneSettings(TuneSettings):
    """``TuneSettings`` with every default filled in (what ``TuneSettings.resolved`` returns)."""

    steps_per_trial: int
    eval_every: int
    storage: str
    study_name: str
    out: str
    #: agent steps per env step (a PettingZoo env's; ``total_steps`` counts agent steps): the
    #: rollout lengths offered keep a batch within one evaluation interval
    agents_per_step: int = 1


def _is_multiagent(env_id: str) -> bool:
    """Whether ``env_id`` names a PettingZoo env module (a typed path: importing it is the user's
    choice); a module path that does not import, or has no constructor, is a one-line ValueError."""
    from clippo.multiagent.pettingzoo import multiagent_source

    return multiagent_source(env_id) is not None


def _agents_per_step(env_id: str, env_kwargs: dict[str, Any]) -> int:
    """The most agent steps one env step of a PettingZoo env takes: all its agents in the
    Parallel API, one in the AEC (turn-based) API."""
    from clippo.multiagent.pettingzoo import AECAdapter, make_adapter, multiagent_source

    source = multiagent_source(env_id, env_kwargs)
    assert source is not None  # (checked by _is_multiagent)
    adapter = make_adapter(source.make())
    try:
        return 1 if isinstance(adapter, AECAdapter) else max(len(adapter.possible_agents), 1)
    finally:
        adapter.close()


def study_folder_name(study_name: str) -> str:
    """A study name as one folder name: characters other than letters, digits, ``.``, ``_`` and
    ``-`` become ``_`` (an env id's ``/`` included); never ``.`` or ``..``."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", study_name)[:100]
    return name if name.strip(".") else "_" + name


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"--{name.replace('_', '-')}={value} is invalid: it must be an integer >= 1")


def base_values(settings: TuneSettings) -> dict[str, Any]:
    """The config every trial starts from (env preset, --config file, defaults), as a dict."""
    from clippo.config.ppo_config import resolve_config

    return resolve_config(
        settings.env_id, config_file=settings.config_file, trust_code=settings.trust_code, overrides=settings._modules()
    ).to_dict()


def search_space(settings: TuneSettings) -> dict[str, tuple[str, tuple]]:
    """SEARCH_SPACE without the hyperparameters the ``--config`` file fixes."""
    from clippo.config.ppo_config import load_config_file

    fixed = load_config_file(settings.config_file, settings.trust_code) if settings.config_file else {}
    return {name: entry for name, entry in SEARCH_SPACE.items() if name not in fixed}


def num_steps_choices(num_envs: int, eval_every: int, min_batch: int = 1) -> list[int]:
    """The rollout lengths whose batch fits in one evaluation interval (and holds at least
    ``min_batch`` samples: a fixed num_minibatches)."""
    return [n for n in SEARCH_SPACE["num_steps"][1] if min_batch <= num_envs * n <= eval_every]


def study_identity(settings: TuneSettings, base: dict[str, Any]) -> dict[str, Any]:
    """What a study's trials depend on; a study is continued only with the same identity."""
    space = search_space(settings)
    return {
        "env_id": settings.env_id,
        "steps_per_trial": settings.steps_per_trial,
        "eval_every": settings.eval_every,
        "eval_episodes": settings.eval_episodes,
        "seed": settings.seed,
        "base_config": {k: v for k, v in base.items() if k not in space and k not in _NOT_WRITTEN},
        "search_space": {name: [kind, list(values)] for name, (kind, values) in space.items()},
    }


def suggest(
    trial, space: dict[str, tuple[str, tuple]], base: dict[str, Any], eval_every: int, agents_per_step: int = 1
) -> dict[str, Any]:
    """Draw one trial's values of the ``space``'s hyperparameters (PPOConfig field names and
    values); ``base``: the config they go on top of; ``agents_per_step``: a PettingZoo env's
    agent steps per env step."""
    params: dict[str, Any] = {}
    num_envs = base["num_envs"]
    for name, (kind, values) in space.items():
        if name == "num_steps":
            min_batch = 1 if "num_minibatches" in space else base["num_minibatches"]
            params[name] = trial.suggest_categorical(
                name, num_steps_choices(num_envs * agents_per_step, eval_every, min_batch)
            )
        elif name == "num_minibatches":
            low, high = values
            batch = num_envs * params.get("num_steps", base["num_steps"])
            params[name] = trial.suggest_int(name, low, min(high, batch), log=True)
        elif kind == "log":
            params[name] = trial.suggest_float(name, *values, log=True)
        elif kind == "int":
            params[name] = trial.suggest_int(name, *values)
        elif kind == "intlog":
            params[name] = trial.suggest_int(name, *values, log=True)
        else:
            params[name] = trial.suggest_categorical(name, list(values))
    return decode(params)


def decode(params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's parameter values as PPOConfig values ("64x64" -> [64, 64])."""
    values = dict(params)
    if isinstance(values.get("hidden_sizes"), str):
        values["hidden_sizes"] = [int(width) for width in values["hidden_sizes"].split("x")]
    return values


class TrialReporter(Callback):
    """Reports the running mean of a trial's evaluations to Optuna after each one (the step is
    the evaluation's index, the multiple of ``eval_every`` it crossed) and stops the trial when
    the pruner says so."""

    def __init__(self, trial, eval_every: int, evaluations: int) -> None:
        self.trial = trial
        self.eval_every = eval_every
        self.evaluations = evaluations
        self.values: list[float] = []
        self.pruned_at: int | None = None

    @property
    def objective(self) -> float:
        return float(sum(self.values) / len(self.values)) if self.values else -math.inf

    def on_update(self, agent, metrics: dict[str, Any]) -> bool | None:
        if EVAL_MEAN not in metrics:
            return None
        index = agent.global_step // self.eval_every
        if index > self.evaluations:  # past the budget: total_steps is rounded up to whole rollouts
            return None
        self.values.append(float(metrics[EVAL_MEAN]))
        self.trial.report(self.objective, step=index)
        if self.trial.should_prune():
            self.pruned_at = index
            return False
        return None


def run_trial(trial, settings: ResolvedTuneSettings, worker: int = 0) -> float:
    """Train and evaluate one trial's agent (its run directory: OUT/STUDY/trials/trial-NNNN)."""
    optuna = require_optuna()
    from clippo import PPO
    from clippo.config.ppo_config import save_config

    base = base_values(settings)
    params = suggest(trial, search_space(settings), base, settings.eval_every, settings.agents_per_step)
    evaluations = settings.steps_per_trial // settings.eval_every
    run_dir = claim_trial_dir(settings.study_dir / "trials", trial.number)
    started = time.perf_counter()
    agent = PPO(
        settings.env_id,
        config_file=settings.config_file,
        trust_code=settings.trust_code,
        run_dir=run_dir,
        **params,
        **settings._modules(),
        total_steps=settings.steps_per_trial,
        seed=settings.seed,
        eval_every=settings.eval_every,
        eval_episodes=settings.eval_episodes,
        tensorboard=False,
        checkpoint_every=0,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(agent.config, run_dir / "config.yaml")
    trial.set_user_attr("config", agent.config.to_dict())
    trial.set_user_attr("run_dir", str(run_dir))
    reporter = TrialReporter(trial, settings.eval_every, evaluations)
    evaluation = EvalCallback(settings.eval_every, settings.eval_episodes, at_end=False)
    prefix = f"trial {trial.number}" + (f" (worker {worker})" if settings.jobs > 1 else "")
    try:
        agent.learn(progress=False, callback=[evaluation, reporter])
    except (NonFiniteError, EnvStepError) as exc:
        trial.set_user_attr("error", first_line(exc))
        print(f"{prefix}: pruned, training stopped: {first_line(exc)[:120]}", flush=True)
        raise optuna.TrialPruned(first_line(exc)) from None
    finally:
        agent.close()
    seconds = time.perf_counter() - started
    if reporter.pruned_at is not None:
        print(
            f"{prefix}: pruned at evaluation {reporter.pruned_at} of {evaluations} "
            f"(running mean {reporter.objective:.2f}), {seconds:.1f} s",
            flush=True,
        )
        raise optuna.TrialPruned()
    print(
        f"{prefix}: objective {reporter.objective:.2f} over {len(reporter.values)} evaluations, {seconds:.1f} s",
        flush=True,
    )
    return reporter.objective


def claim_trial_dir(folder: Path, number: int) -> Path:
    """A new run directory for trial ``number``, created exclusively: ``trial-NNNN``, or with a
    suffix if that exists (left by a study of the same name whose storage was removed). Nothing
    already there is deleted or reused."""
    folder.mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        path = folder / (f"trial-{number:04d}" + (f"-{attempt}" if attempt else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ValueError(f"cannot create a run directory for trial {number} in {folder}: too many exist")


# ---------------------------------------------------------------------------------------------
# the study: storage, workers, outputs
# ---------------------------------------------------------------------------------------------
def open_storage(url: str):
    """Optuna's database storage with heartbeats (so killed trials are found and retried)."""
    optuna = require_optuna()
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # several processes write to one file: wait for the lock instead of failing at once
        engine_kwargs["connect_args"] = {"timeout": 60}
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
        retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
    else:  # Optuna before 4.9
        retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD, **retry
        )
    except Exception as exc:  # sqlalchemy and optuna raise many kinds for an unusable URL
        raise ValueError(f"cannot open storage {url!r}: {first_line(exc)[:200]}") from None


def load_study(settings: ResolvedTuneSettings, create: bool = False):
    """The study of these settings (created when ``create``), after checking that a study found
    in the storage was made with the same settings."""
    optuna = require_optuna()
    storage = open_storage(settings.storage)
    base = base_values(settings)
    identity = study_identity(settings, base)
    evaluations = settings.steps_per_trial // settings.eval_every
    sampler = optuna.samplers.TPESampler()
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(evaluations // 3, 1))
    space = search_space(settings)
    min_batch = 1 if "num_minibatches" in space else base["num_minibatches"]
    if "num_steps" in space and not num_steps_choices(base["num_envs"], settings.eval_every, min_batch):
        raise ValueError(
            f"--eval-every={settings.eval_every} is invalid with num_envs={base['num_envs']}: the smallest rollout "
            f"({base['num_envs']} envs x {SEARCH_SPACE['num_steps'][1][0]} steps) must fit in one evaluation interval; "
            "give a larger --eval-every or --steps-per-trial, or fewer envs (--config)"
        )
    try:
        study = (
            optuna.create_study(
                storage=storage,
                study_name=settings.study_name,
                direction="maximize",
                sampler=sampler,
                pruner=pruner,
                load_if_exists=create,
            )
            if create
            else optuna.load_study(storage=storage, study_name=settings.study_name, sampler=sampler, pruner=pruner)
        )
    except Exception as exc:
        raise ValueError(
            f"cannot open study {settings.study_name!r} in {settings.storage}: {first_line(exc)[:200]}"
        ) from None
    stored = study.user_attrs.get("clippo")
    if stored is None and create:
        study.set_user_attr("clippo", identity)
    elif stored is not None and json.dumps(stored, sort_keys=True) != json.dumps(identity, sort_keys=True):
        key = next(
            k for k in identity if json.dumps(stored.get(k), sort_keys=True) != json.dumps(identity[k], sort_keys=True)
        )
        was = _short(stored.get(key))
        raise ValueError(
            f"study {settings.study_name!r} in {settings.storage} was made with {key}={was}, not "
            f"{_short(identity[key])}: "
            "repeat its settings to continue it, or give another --study-name"
        )
    return study


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _counts(study) -> dict[str, int]:
    """Trials per state name, and ``finished``: complete or pruned (what --trials counts)."""
    counts = {state: 0 for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    counts["finished"] = counts["COMPLETE"] + counts["PRUNED"]
    return counts


def run_worker(settings: ResolvedTuneSettings, worker: int = 0, parent: int | None = None) -> None:
    """Run trials (a trial queued for a retry first) while the study holds fewer than
    ``settings.trials`` finished ones.

    Trials running elsewhere are not waited for: a killed process can leave a trial RUNNING
    forever (Optuna fails a silent trial only once it has sent a heartbeat), and waiting for it
    would never end. So J workers can end a study with up to J - 1 trials more than asked."""
    import numpy as np

    optuna = require_optuna()
    study = load_study(settings)
    # A seed of its own per worker and per start: parallel workers and a continued study do not
    # repeat the random trials already drawn.
    seed = int(np.random.SeedSequence([settings.seed, worker, len(study.trials)]).generate_state(1)[0])
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    while parent is None or os.getppid() == parent:  # a worker whose `clippo tune` died stops
        optuna.storages.fail_stale_trials(study)
        if _counts(study)["finished"] >= settings.trials:
            return
        study.optimize(lambda trial: run_trial(trial, settings, worker), n_trials=1)


def tune(settings: TuneSettings) -> int:
    """``clippo tune``: run the study to ``settings.trials`` finished trials, then write the
    summary, the best config and the plots into ``settings.out``. Returns the exit status."""
    require_optuna()
    settings = settings.resolved()
    study = load_study(settings, create=True)
    counts = _counts(study)
    evaluations = settings.steps_per_trial // settings.eval_every
    print(
        f"study {settings.study_name!r} in {settings.storage}: {counts['finished']} of {settings.trials} trials "
        f"finished; {settings.steps_per_trial} steps per trial, {evaluations} evaluations of {settings.eval_episodes} "
        f"episodes; {settings.jobs} job{'s' if settings.jobs > 1 else ''}",
        flush=True,
    )
    status = 0
    try:
        if counts["finished"] < settings.trials:
            if settings.jobs == 1:
                run_worker(settings)
            else:
                status = _run_workers(settings)
    finally:
        paths = write_outputs(load_study(settings), settings)
    for path in paths:
        note = ""
        if path.name == BEST_CONFIG_FILE:
            note = (
                f": the best trial's hyperparameters, without the trials' budget ({', '.join(TRIAL_ONLY)}); train "
                f"with: {train_command(settings, path)}"
            )
        print(f"wrote {path}{note}", flush=True)
    return status


def _run_workers(settings: ResolvedTuneSettings) -> int:
    """``jobs`` worker processes on the same storage; SIGINT/SIGTERM reach them all."""
    jobs = min(settings.jobs, settings.trials)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    payload = json.dumps(dataclasses.asdict(settings))
    workers = [
        subprocess.Popen([sys.executable, "-m", "clippo.tools.tuning", payload, str(index), str(os.getpid())], env=env)
        for index in range(1, jobs + 1)
    ]

    def forward(signum, frame) -> None:
        for process in workers:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        codes = [process.wait() for process in workers]
    except KeyboardInterrupt:  # Ctrl-C reached the workers too (same process group)
        codes = [process.wait() for process in workers]
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = [(index, code) for index, code in enumerate(codes, start=1) if code != 0]
    for index, code in failed:
        print(f"clippo: worker {index} exited with status {code}", file=sys.stderr, flush=True)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
SUMMARY_FILE = "summary.md"
BEST_CONFIG_FILE = "best_config.yaml"


#: what every trial sets for the study only, left out of best_config.yaml (a run has its own budget)
TRIAL_ONLY = ("total_steps", "eval_every", "eval_episodes")


def write_outputs(study, settings: ResolvedTuneSettings) -> list[Path]:
    """summary.md, best_config.yaml (when a trial completed) and Optuna's plots (with matplotlib),
    each written atomically and never through a link (clippo.core.safety)."""
    from clippo.core.safety import write_file

    out = settings.study_dir
    out.mkdir(parents=True, exist_ok=True)
    written = []
    best = _best_trial(study)
    if best is not None:
        path = out / BEST_CONFIG_FILE
        write_file(path, best_config_yaml(best, study, settings))
        written.append(path)
    plots, not_drawn = write_plots(study, out) if settings.plots else ([], [])
    path = out / SUMMARY_FILE
    write_file(path, summary_markdown(study, settings, best, plots, not_drawn))
    return [path, *written, *plots]


def _best_trial(study):
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def objective_text(settings: ResolvedTuneSettings) -> str:
    evaluations = settings.steps_per_trial // settings.eval_every
    return (
        f"the mean deterministic evaluation return over a trial's {evaluations} evaluations (one every "
        f"{settings.eval_every:,} of its {settings.steps_per_trial:,} steps, {settings.eval_episodes} episodes "
        "each), maximized"
    )


def train_command(settings: TuneSettings, path: Path) -> str:
    """The ``clippo train`` command that uses the best config (with the study's env modules)."""
    modules = "".join(f" --env-module {module}" for module in settings.env_modules)
    return f"clippo train {settings.env_id}{modules} --config {path}"


def best_config_yaml(best, study, settings: ResolvedTuneSettings) -> str:
    """The best trial's config as a flat YAML mapping that ``clippo train ENV_ID --config`` takes.

    The study's storage is data too (it may be someone else's database): the stored config is
    validated as a config, and an encoder it names other than a built-in is written only with
    ``trust_code`` (clippo.core.safety)."""
    import yaml

    from clippo.config.ppo_config import config_from_dict
    from clippo.core import safety

    source = f"study {settings.study_name!r} (trial {best.number})"
    stored = best.user_attrs.get("config")
    try:
        validated = config_from_dict(dict(stored) if isinstance(stored, dict) else stored)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source} holds an invalid config: {first_line(exc)}") from None
    safety.check_encoder_name(validated.encoder, source, settings.trust_code)
    # (the trial's budget and evaluation cadence are the study's, not the run's: clippo train then uses
    # the env's own total_steps, or --total-steps)
    config = {k: getattr(validated, k) for k in stored if k not in _NOT_WRITTEN and k not in TRIAL_ONLY}
    searched = {k: config.pop(k) for k in search_space(settings) if k in config}
    path = settings.study_dir / BEST_CONFIG_FILE
    header = [
        f"# clippo tune {settings.env_id}: trial {best.number} of study {settings.study_name!r} ({settings.storage}),",
        f"# objective {best.value:.2f}: {objective_text(settings)}; training seed {settings.seed}.",
        f"# Train with: {train_command(settings, path)} (add --total-steps N for a budget of your own)",
        f"# Left out: {', '.join(sorted(TRIAL_ONLY))} (each trial's {settings.steps_per_trial:,}-step budget and "
        "evaluation cadence): the run uses the env's own.",
        "# Searched:",
    ]
    dump = lambda values: yaml.safe_dump(values, sort_keys=False, default_flow_style=None)  # noqa: E731
    return (
        "\n".join(header)
        + "\n"
        + dump(searched)
        + "# Fixed in the study (env preset, --config, defaults):\n"
        + dump(config)
    )


def _format_params(params: dict[str, Any]) -> str:
    """A trial's parameters for summary.md's table: they come from the study's storage (data), so
    they are shown on one line with ``& < > |`` escaped."""
    import html

    from clippo.core.safety import clean

    text = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    return html.escape(clean(text, 1000), quote=False).replace("|", "\\|")


def summary_markdown(study, settings: ResolvedTuneSettings, best, plots: list[Path], not_drawn: list[str]) -> str:
    counts = _counts(study)
    order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}

    def value(trial) -> float:
        if trial.value is not None:
            return trial.value
        reports = trial.intermediate_values
        return reports[max(reports)] if reports else -math.inf

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: (order.get(t.state.name, 5), -value(t), t.number))
    lines = [
        f"# clippo tune: {settings.env_id}",
        "",
        f"Study `{settings.study_name}` in `{settings.storage}`: {counts['finished']} finished trials "
        f"({counts['COMPLETE']} complete, {counts['PRUNED']} pruned), {counts['FAIL']} failed, "
        f"{counts['RUNNING']} running; target {settings.trials}.",
        "",
        f"Objective: {objective_text(settings)}. TPE sampler, median pruner on the running mean of the evaluations. "
        f"Training seed {settings.seed}; trial run directories in `{settings.study_dir / 'trials'}`.",
        "",
    ]
    if best is not None:
        lines += [
            f"Best: trial {best.number}, objective {best.value:.2f}: `{settings.study_dir / BEST_CONFIG_FILE}` "
            f"(`clippo train {settings.env_id} --config {settings.study_dir / BEST_CONFIG_FILE}`).",
            "",
        ]
    else:
        lines += ["No trial has completed yet.", ""]
    lines += ["| trial | value | state | evaluations | params |", "| --- | --- | --- | --- | --- |"]
    for trial in trials:
        shown = value(trial)
        text = "" if not math.isfinite(shown) else f"{shown:.2f}"
        if trial.state.name == "PRUNED" and text:
            text += " (at prune)"
        params = _format_params(trial.params)
        name = f"**{trial.number}**" if best is not None and trial.number == best.number else str(trial.number)
        lines.append(f"| {name} | {text} | {trial.state.name.lower()} | {len(trial.intermediate_values)} | {params} |")
    lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    if not_drawn:
        lines += ["Not drawn: " + "; ".join(not_drawn) + ".", ""]
    return "\n".join(lines)


def write_plots(study, out: Path) -> tuple[list[Path], list[str]]:
    """Optuna's optimization history, intermediate values (the evaluation curves, pruning
    visible) and parameter importances, as PNG files; nothing without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.figure import Figure
    except ImportError:
        return [], ["plots (matplotlib is not installed: pip install 'clippo[plot]')"]
    import io

    import numpy as np
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as views

    from clippo.core.safety import write_file

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return [], ["plots (fewer than 2 complete trials)"]
    drawers = {
        "optimization_history": lambda: views.plot_optimization_history(study),
        "intermediate_values": lambda: views.plot_intermediate_values(study),
        "param_importances": lambda: views.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator()),
    }
    written, not_drawn = [], []
    for name, draw in drawers.items():
        try:
            with warnings.catch_warnings():  # Optuna's notes on small studies ("importance may be inaccurate")
                warnings.simplefilter("ignore")
                axes = draw()
            figure = axes.flat[0].figure if isinstance(axes, np.ndarray) else axes.figure  # (Axes, or an array of them)
            assert isinstance(figure, Figure)  # (Optuna draws on a figure of its own, not a subfigure)
            path = out / f"{name}.png"
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
            write_file(path, buffer.getvalue())
            plt.close(figure)
            written.append(path)
        except Exception as exc:  # a plot Optuna cannot draw for this study (e.g. importances of one value)
            not_drawn.append(f"{name} ({first_line(exc)[:100]})")
    return written, not_drawn


def _worker_main(argv: list[str]) -> int:
    """Entry point of the worker processes: ``python -m clippo.tools.tuning SETTINGS_JSON INDEX PARENT_PID``."""
    settings = ResolvedTuneSettings(**json.loads(argv[0]))

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt  # Optuna marks the running trial failed; the study goes on without it

    signal.signal(signal.SIGTERM, interrupt)
    try:
        run_worker(settings, worker=int(argv[1]), parent=int(argv[2]))
    except KeyboardInterrupt:
        return 130
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        print(f"clippo: error: worker {argv[1]}: {first_line(exc)}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
