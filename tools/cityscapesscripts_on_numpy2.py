"""cityscapesscripts 2.3.0 (its latest) as a reference on numpy 2, for the tests and benchmarks that
use it (or detectron2's Cityscapes evaluator, which calls it) as the arbiter of our numbers.

It breaks on numpy 2 in two places: it calls np.in1d, which numpy 2.4 removed (np.isin on the
flattened array is numpy's stated replacement), and its writeDict2JSON cannot write the numpy
integers its own matching yields there. `mend_cityscapesscripts_for_numpy2()` mends both in the
calling process, only on numpy 2; the package never calls it (our evaluation never calls np.in1d
and writes that file with the same write_cityscapes_json).
"""
import numpy as np

from cityscapes_ft.evaluation.official_parallel import write_cityscapes_json


def mend_cityscapesscripts_for_numpy2() -> bool:
    """Returns whether anything was mended (numpy 2) or not (numpy 1: nothing to do)."""
    if int(np.__version__.split(".")[0]) < 2:
        return False
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as cs_eval

    if not hasattr(np, "in1d"):
        np.in1d = lambda ar1, ar2, assume_unique=False, invert=False: np.isin(
            np.ravel(ar1), ar2, assume_unique=assume_unique, invert=invert)
    cs_eval.writeDict2JSON = write_cityscapes_json
    return True
