"""Run an experiment as `python -m MODULE ARGS...` would, optionally stopping inside one save.

    python tests/crash_child.py [--hang-commit=STEP --marker=PATH] MODULE ARGS...

With --hang-commit, the asynchronous save of STEP writes all its data and then, just before Orbax
renames its temporary folder into the committed step, writes PATH and waits for ever: the moment a
test kills the process with SIGKILL to leave a half-finished checkpoint behind.
"""
import os
import runpy
import sys
import time


def hang_before_commit(step, marker):
    from orbax.checkpoint._src.path import atomicity

    for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
        original = cls.finalize

        async def finalize(self, *args, _original=original, **kwargs):
            if os.path.basename(os.fspath(self.get_final())) == str(step):
                with open(marker, "w") as f:
                    f.write(os.fspath(self.get()))
                while True:
                    time.sleep(1.0)
            return await _original(self, *args, **kwargs)

        cls.finalize = finalize


def main(argv):
    options = {}
    while argv and argv[0].startswith("--"):
        name, _, value = argv.pop(0)[2:].partition("=")
        options[name] = value
    if "hang-commit" in options:
        hang_before_commit(int(options["hang-commit"]), options["marker"])
    module, sys.argv = argv[0], argv
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
