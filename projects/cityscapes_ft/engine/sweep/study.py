"""The Optuna study of a sweep: its storage, its pruner (kept in the study, so every worker and
every trial's training process prunes by the same rule), and the trial a training process
reports to (CITYSCAPES_FT.SWEEP.*). Several workers on any machines share a study through an RDB
storage URL: Optuna's own distributed mode, nothing of ours in between."""
import os
import time

import yaml

from ...errors import ConfigNotRunnable

DEFAULT_PRUNER, DEFAULT_SAMPLER = "MedianPruner", "TPESampler"
# Study user attributes: the pruner, and what the objective is.
PRUNER_ATTR, OBJECTIVE_ATTR = "cityscapes_ft_pruner", "cityscapes_ft_objective"
# SQLite waits this long for another worker's write instead of failing with "database is locked".
SQLITE_TIMEOUT_S = 60


def default_storage(sweep_dir: str) -> str:
    return f"sqlite:///{os.path.join(os.path.abspath(sweep_dir), 'study.db')}"


def open_storage(url: str):
    """Optuna's RDBStorage for `url` (SQLite: patient with the other workers' writes)."""
    import optuna

    from sqlalchemy.exc import IntegrityError, OperationalError

    kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite:") else {}
    attempts = 5
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except (IntegrityError, OperationalError) as e:
            # Workers started together on a new database race to create its tables and version
            # row; the losers find them made on the next try.
            if attempt == attempts - 1:
                raise ConfigNotRunnable(f"--storage {url}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
            time.sleep(0.5 * (attempt + 1))
        except Exception as e:  # a bad URL, a missing driver, an unreachable database
            raise ConfigNotRunnable(f"--storage {url}: {type(e).__name__}: {str(e).splitlines()[0]}") from e


def parse_arguments(text: str, what: str) -> dict:
    """'{n_startup_trials: 2}' -> dict: the keyword arguments of an Optuna class, as YAML."""
    if not text:
        return {}
    try:
        args = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigNotRunnable(f"{what}: not a YAML mapping ({' '.join(str(e).split())})") from e
    if not isinstance(args, dict):
        raise ConfigNotRunnable(f"{what}: expected a YAML mapping of keyword arguments, e.g. "
                                f"'{{n_startup_trials: 2}}'; found {text!r}")
    return args


def build_optuna_object(module, name: str, args: dict, what: str):
    """An instance of the Optuna class `name` of `module` (optuna.pruners, optuna.samplers)."""
    classes = sorted(n for n in dir(module) if n.endswith(("Pruner", "Sampler")) and not n.startswith("Base"))
    if name not in classes:
        raise ConfigNotRunnable(f"{what} {name}: not one of Optuna's: {', '.join(classes)}")
    try:
        return getattr(module, name)(**args)
    except (TypeError, ValueError) as e:
        raise ConfigNotRunnable(f"{what} {name} with {args}: {' '.join(str(e).split())}") from e


def build_pruner(spec: dict):
    import optuna

    return build_optuna_object(optuna.pruners, spec["name"], spec.get("args") or {}, "--pruner")


def create_or_load_study(storage_url, study_name, direction, objective, pruner_spec, sampler):
    """The study `study_name` in the storage, created if new (with `pruner_spec` and `objective`
    kept in it). Joining an existing study with another objective or pruner is refused."""
    import optuna

    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name=study_name, direction=direction,
                                load_if_exists=True, sampler=sampler)
    attrs = study.user_attrs
    if PRUNER_ATTR not in attrs:
        study.set_user_attr(PRUNER_ATTR, pruner_spec)
        study.set_user_attr(OBJECTIVE_ATTR, objective)
    elif attrs.get(OBJECTIVE_ATTR) != objective:
        raise ConfigNotRunnable(f"Study '{study_name}' in {storage_url} optimises {attrs[OBJECTIVE_ATTR]}; "
                                f"this config's is {objective}: use another --study")
    study.pruner = build_pruner(study.user_attrs[PRUNER_ATTR])
    return study


def trial_of(study, number: int):
    """A handle on trial `number` of `study`, which another process may have asked for."""
    import optuna

    # The study's own (cached) storage, so later reads through the study see what is set here;
    # Optuna has no public getter for it or for the study's id.
    storage = study._storage
    return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study._study_id, number))


class TrialReporter:
    """The running Optuna trial `number` of a study, for the training process that runs it: reports
    intermediate values and asks the study's pruner."""

    def __init__(self, storage_url: str, study_name: str, number: int):
        import optuna

        storage = open_storage(storage_url)
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
        study.pruner = build_pruner(study.user_attrs[PRUNER_ATTR])
        self.storage = storage
        self.trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study_name), number)
        self.trial = optuna.trial.Trial(study, self.trial_id)

    def report(self, value: float, step: int):
        """Reports `value` at `step` unless the step has a value already: a resumed trial repeats
        the evaluations after its checkpoint, and Optuna keeps a step's first report."""
        if step not in self.storage.get_trial(self.trial_id).intermediate_values:
            self.trial.report(value, step)

    def should_prune(self) -> bool:
        return self.trial.should_prune()
