"""The node as processes: `dicom-ai serve` supervises a receiver, `workers` pipeline workers and a sender.

- receiver (receiver.py): the C-STORE SCP, the web console (pages, API, /metrics from the database,
  STOW-RS) and assembly (quiet time, a rule's `complete` expectation, release of studies whose time
  window opened); it reads model cards and rules but never imports torch, so it stays small and its
  threads never wait behind a model for the interpreter lock;
- worker (worker.py), `workers` of them: each loads the models and claims complete studies one at a time
  (complete -> processing, compare-and-set, with its worker id in studies.claimed_by), and retries
  studies deferred by a database or disk failure;
- sender (sender.py): the outbox (the only process that delivers), retention, and the validation loop's
  inbound side: the HL7 listener (hl7_listen), report matching and drift checks;
- supervisor (supervisor.py): start-up recovery, starts the roles (child.py), restarts one that dies and
  gives a dead worker's studies back to the queue; SIGINT/SIGTERM stop them all.

They share the SQLite database (WAL: readers never wait, writers take turns) and the spool folder.
`workers = 0` keeps the whole node in one process (dicom_ai/node.py).
"""
