"""Training: state + optimizer + EMA (state.py), the loop (loop.py), what a run writes (logging.py),
and the shared experiment command line (run.py)."""
from gm.train.state import TrainState, init_state, make_optimizer, optimizer_from_config, train_step
from gm.train.loop import NonFiniteLossError, train_and_evaluate
