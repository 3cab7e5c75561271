"""Training: the train state and step (state.py), the loop (loop.py), evaluations (evaluators.py), what a
run writes (logging.py), and the command line every experiment shares (run.py), which finds families
through `gm.families`."""
from gm.train.state import TrainState, init_state, step_function, train_step, training_of
from gm.train.loop import NonFiniteLossError, train_and_evaluate
