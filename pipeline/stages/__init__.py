"""The pipeline's stages: prepare, train, index, eval, report (and run, which does them in order),
generate, export, submit, status. Each is a module with `add_arguments(parser)`, an `Args`
dataclass of its own options and `main(experiment, args)`, handed the experiment the CLI resolved."""

RESTART_HELP = ("train unfinished tasks from step 0: discard their train_state (checkpoints, cached keys) and any "
                "DONE that no longer matches the config, data or earlier tasks (without it: refused; a valid "
                "DONE is always kept)")
CHECK_HELP = ("only check, offline, that this stage can run with the config (exit 2 naming what would stop it) "
              "and whether its output is current (exit 0) or it would run (exit 1)")
