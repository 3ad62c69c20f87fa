"""Several models, one dataset, one split -> a side-by-side table (markdown, CSV) and JSON.

``results``: result rows and the tables made from them; ``runners``: the paper's tables and figures, each
run cached; ``tuning``: sweeps and hyper-parameter search through RecBole's ``HyperTuning``; ``timing``:
helpers of the timing scripts in ``benchmarks/``.
"""

from recbole_letter.benchmark.results import (
    METRIC_ORDER,
    ROW_KEYS,
    read_rows,
    result_row,
    results_table,
    write_results,
    write_table,
)
from recbole_letter.benchmark.runners import (
    ABLATION_VARIANTS,
    BEST_TAU,
    CODES_VARIANTS,
    LLM_MODELS,
    QUICK_OVERRIDES,
    TABLE1_MODELS,
    ablation,
    codes,
    run_cached,
    table1,
)
from recbole_letter.benchmark.timing import BatchList, scratch_dir, use_tf32
from recbole_letter.benchmark.tuning import SWEEP_VALUES, sweep, tune
