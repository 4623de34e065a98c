"""Fine-tuning jobs over OpenAI's API: `tasktune serve --fine-tuning` takes uploads and jobs the way OpenAI's
fine-tuning service does, and trains them with tasktune's own check, recipe and training loop.

STATE/                      (--state; default .tasktune-state)
  state.db                  SQLite (WAL): files, jobs, events, checkpoints, and which tenant owns each
  files/file-...            uploaded and result files, named by their generated id only
  runs/ftjob-.../           each job's run folder (data, checkpoints, adapter): a normal tasktune run
  worker.lock               held by the one training process (a restarted server waits for an orphan to end)

The package: store.py (the database), tenants.py (--api-keys), convert.py (OpenAI chat rows and hyper-parameters
into tasktune's task and settings), worker.py (the training process of one job), scheduler.py (the server's
thread that runs jobs one at a time and adds finished models to the engine), api.py (the HTTP routes).
"""
