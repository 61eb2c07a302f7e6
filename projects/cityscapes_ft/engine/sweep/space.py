"""A sweep's search space: a YAML file of config keys, each with Optuna's own arguments.

    SOLVER.BASE_LR: {type: float, low: 0.001, high: 0.02, log: true}
    MODEL.BACKBONE.FREEZE_AT: {type: int, low: 0, high: 2}
    MODEL.RESNETS.NORM: {type: categorical, choices: ["FrozenBN", "GN"]}

`float` and `int` take the arguments of Optuna's FloatDistribution / IntDistribution (low, high,
log, step), `categorical` those of CategoricalDistribution (choices). A choice may be a string
holding a tuple, "(800, 1024)", for tuple-valued keys (a trial's values go to the config as
command-line values do). Every key is checked against the config it will be merged into, with its
lowest, highest and every listed value, before any trial starts.
"""
import difflib
from typing import Dict, List

import yaml

from ...config import flat_config_items, load_cityscapes_ft_cfg
from ...errors import ConfigNotRunnable

# The keys a sweep sets itself in each trial.
RESERVED_KEYS = ("OUTPUT_DIR",)
RESERVED_PREFIXES = ("CITYSCAPES_FT.SWEEP.",)
_ARGUMENTS = {"float": ("low", "high", "log", "step"), "int": ("low", "high", "log", "step"),
              "categorical": ("choices",)}
_EXAMPLE = "{type: float, low: 0.001, high: 0.02, log: true}"


class SearchSpace:
    """The Optuna distributions of a space file, by config key, in the file's order."""

    def __init__(self, path: str, distributions: Dict[str, object]):
        self.path = path
        self.distributions = distributions

    def overrides(self, params: Dict[str, object]) -> List[str]:
        """KEY VALUE command-line pairs for a trial's sampled values."""
        out = []
        for key in self.distributions:
            if key in params:
                out += [key, override_text(params[key])]
        return out


def override_text(value) -> str:
    """A sampled value as a command-line value: what yacs reads back as that value."""
    return repr(value) if isinstance(value, float) else str(value)


def load_search_space(path: str, config_file: str, opts=()) -> SearchSpace:
    """Reads and checks a space file against `config_file` with the KEY VALUE `opts`; every
    problem is one ConfigNotRunnable naming the file, the key and what was expected."""
    import optuna.distributions as od

    try:
        with open(path) as f:
            content = yaml.safe_load(f)
    except OSError as e:
        raise ConfigNotRunnable(f"--space: cannot read '{path}' ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise ConfigNotRunnable(f"--space {path} is not valid YAML: {' '.join(str(e).split())}") from e
    if not isinstance(content, dict) or not content:
        raise ConfigNotRunnable(f"--space {path}: expected a mapping of config keys to Optuna arguments, "
                                f"e.g. SOLVER.BASE_LR: {_EXAMPLE}; found {type(content).__name__}")
    cfg = load_cityscapes_ft_cfg(config_file, opts)
    known = dict(flat_config_items(cfg))
    distributions = {}
    for key, spec in content.items():
        where = f"{path}: {key}"
        key = str(key)
        if key in RESERVED_KEYS or key.startswith(RESERVED_PREFIXES):
            raise ConfigNotRunnable(f"{where}: the sweep sets {key} itself for each trial; it cannot be searched")
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
            raise ConfigNotRunnable(f"{where}: not a config key of {config_file}"
                                    + (f" (did you mean {', '.join(close)}?)" if close else ""))
        if not isinstance(spec, dict) or spec.get("type") not in _ARGUMENTS:
            raise ConfigNotRunnable(f"{where}: expected a mapping with type float, int or categorical and "
                                    f"Optuna's arguments, e.g. {_EXAMPLE}; found {spec!r}")
        kind, args = spec["type"], {k: v for k, v in spec.items() if k != "type"}
        unknown = sorted(set(args) - set(_ARGUMENTS[kind]))
        if unknown:
            raise ConfigNotRunnable(f"{where}: {kind} takes {', '.join(_ARGUMENTS[kind])}; not {', '.join(unknown)}")
        try:
            if kind == "float":
                dist = od.FloatDistribution(**args)
            elif kind == "int":
                dist = od.IntDistribution(**args)
            else:
                if not isinstance(args.get("choices"), list) or not args["choices"]:
                    raise ValueError(f"choices must be a non-empty list, not {args.get('choices')!r}")
                dist = od.CategoricalDistribution(args["choices"])
        except (TypeError, ValueError) as e:
            raise ConfigNotRunnable(f"{where}: {' '.join(str(e).split())} (Optuna's {kind} arguments: "
                                    f"{', '.join(_ARGUMENTS[kind])})") from e
        values = list(dist.choices) if kind == "categorical" else [dist.low, dist.high]
        for value in values:
            try:
                load_cityscapes_ft_cfg(config_file, list(opts) + [key, override_text(value)])
            except ConfigNotRunnable as e:
                raise ConfigNotRunnable(f"{where}: the value {value!r} does not fit the key, which is "
                                        f"{known[key]!r} in the config ({str(e).splitlines()[0]})") from e
        distributions[key] = dist
    return SearchSpace(path, distributions)
