"""The help text of the `pipeline` command: each command's epilog, its exit-code table.

`cli.build_parser` attaches these to the commands; `--help` prints them as written, and
scripts/docs.py turns each "exit codes:" table (and the prose before it) into docs/cli.md.
A code's meaning may run over several lines, each continuation indented deeper than the code.
"""

from __future__ import annotations

EPILOG = """exit codes:
  0    every row answered (or skipped), or failures within run.fail_threshold
  1    some rows failed or gave invalid answers, a failed batch's rows among them (rerun,
       or re-ask with output.retry_invalid)
  2    config, input, output or store problem, found before anything was sent
  3    stopped early (key or model rejected, budget reached, endpoint down, only 429s for
       10 minutes), or rows left pending: a batch expired or was cancelled with
       run.batch.deadline null, or (online) their requests wait in an open batch; answers
       are kept
  4    another run is using the same store
  5    stopped part-way by an input, output or store error after sending, or a --report
       that cannot be written at the end (the output is written then); answers are kept
  6    internal error (a bug): one line here, the traceback in the file it names
  130  interrupted (Ctrl-C); answers are kept, the output is left as it was; the summary
       counts the rows as the store has them; rerun to resume
  143  stopped by SIGTERM (systemd's stop, timeout); as 130
"""

COMPARE_EPILOG = """prints one JSON object: the sample, and per variant its evaluation against
output.gold (when set), invalid and failed rates, tokens, the sample's cost and the whole
table's projected cost (online and in batch), latency p50/p95; agreement and Cohen's kappa
between variants; the rows where they differ (rows a variant left pending or failed are
counted apart, as unanswered by it); warnings: variants that send identical requests (they
share their answers through the store, so comparing them says nothing), gold values
outside output.labels, and run.mode batch (also said before sending). Variants are sent
online, at the online price, whatever run.mode says. Every variant uses the config's store:
a rerun sends nothing, and a later run of the chosen variant reuses the sample's answers.

exit codes:
  0    every variant answered the sample (failed or invalid rows are in the figures)
  2    config, input, output or store problem
  3    a variant stopped early (key or model rejected, budget reached, endpoint down)
  4    another run is using the same store
  6    internal error (a bug)
  130  interrupted (Ctrl-C)
  143  stopped by SIGTERM (systemd's stop, timeout); as 130
"""

CHECK_EPILOG = """exit codes:
  0    no problem found
  2    config, input, output or store problem
  6    internal error (a bug)
  130  interrupted (Ctrl-C)
  143  stopped by SIGTERM (systemd's stop, timeout); as 130
"""

VALIDATE_EPILOG = """prints an ok line once every check passed, then any warning (the rows the
template fails on) and what the model check found. With run.engine ray it also checks that
Ray is installed and that a cluster's address (run.ray.address or RAY_ADDRESS) accepts
connections, starting nothing; an s3:// output is proved writable (an empty probe object
written beside it and deleted) and an oxen:// output's repository and branch are looked up.

exit codes:
  0    every check passed
  2    config, input, output or store problem, a parameter the model does not accept, or a
       template that fails on every row it renders (rows prompt.skip_null skips are not)
  3    the endpoint cannot be reached at model.base_url (the name does not resolve, the
       connection is refused or times out), rejects the key, or does not serve the model
  6    internal error (a bug)
  130  interrupted (Ctrl-C)
  143  stopped by SIGTERM (systemd's stop, timeout); as 130
"""

STATUS_EPILOG = """prints one JSON object: rows, done, invalid (answered, but the answer does not
parse under the current output settings), failed, pending (batch_pending of them wait in
open batches), skipped (prompt.skip_null), row_errors (rows the template fails on) and
first_row_error, the store, last_run (date, command and exit_code of the run log's last
line; null before the first run), and
batches: those not collected yet (run.mode batch) with id, state, requests, completed,
failed, age_s and deadline_in_s, as the last run or poll left them (status sends nothing);
deadline_in_s counts to the config's run.batch.deadline (with --set as given) after the
batch's submission, as a run would measure it (negative: passed; null: no deadline).

exit codes:
  0    nothing left to do: every row is done or skipped
  1    rows are invalid, failed, pending or have row errors (run.fail_threshold is ignored)
  2    config, input or store problem
  6    internal error (a bug)
  130  interrupted (Ctrl-C)
  143  stopped by SIGTERM (systemd's stop, timeout); as 130
"""

REPARSE_EPILOG = """exit codes:
  0    every row answered from the store (or skipped), or failures within run.fail_threshold
  1    some rows failed or gave invalid answers; or some rows have no answer in the store for
       the requests this config makes (the prompt, {{ labels }}, the model or its params
       changed since they were sent): then the output is left as it was, and `pipeline run`
       would send them
  2    config, input, output or store problem
  4    another run is using the same store
  6    internal error (a bug)
  130  interrupted (Ctrl-C)
  143  stopped by SIGTERM (systemd's stop, timeout); as 130
"""

MODELS_EPILOG = """exit codes:
  0    the models (or the model) printed
  2    the endpoint cannot be reached, or answered with an error
  3    show: the endpoint does not serve that model
  6    internal error (a bug)
  130  interrupted (Ctrl-C)
  143  stopped by SIGTERM (systemd's stop, timeout); as 130
"""

STORE_EPILOG = """exit codes:
  0    check: the store is sound; salvage: the readable answers are in a fresh store
  2    config problem, no store yet, or (check) the store is damaged
  4    salvage: a run is using the store
  6    internal error (a bug)
  130  interrupted (Ctrl-C)
  143  stopped by SIGTERM (systemd's stop, timeout); as 130
"""

EXPORT_EPILOG = """One line per distinct request that the store has no answer for, in the OpenAI
Batch API's shape: custom_id is the store key, method POST, url /v1/chat/completions, and
body the request exactly as a run sends it. The files are the input of `vllm run-batch -i
OUT -o RESULTS --model MODEL` or of an upload to a batch API. A new file begins before one
would pass run.batch.max_requests_per_file requests or run.batch.max_file_mb MiB; each file
appears whole or not at all. Prints one JSON object: requests, files (path, requests and
bytes of each), rows, already_answered (rows whose request the store answers),
in_open_batches (rows whose request is in a batch a run submitted and has not collected
yet: not exported, as that batch answers it; a warning names the batches), skipped
(prompt.skip_null) and row_errors (rows the template fails on: not exported). With nothing
to export, no file is written. Only a batch input file (an earlier export, or an empty file)
is written over: an OUT or later part's name that is the store (or its -wal, -shm, -journal
or lock file), the config, its input or output, or a file whose first line is no batch
request is refused before anything is written.

exit codes:
  0    the files are written, or nothing is left to export
  2    config, input, output or store problem (or a request larger than one file may hold);
       OUT, or a later part's name, is a file the export must not write over
  6    internal error (a bug)
  130  interrupted (Ctrl-C); the files already finished are whole, no half file is left
  143  stopped by SIGTERM (systemd's stop, timeout); as 130
"""

IMPORT_EPILOG = """Reads each line's custom_id and response: a 200 with a chat completion is an
answer, anything else (an error, another status, an expired request) a failure that a
later run sends online. Lines for requests this config does not make are skipped. An
answer replaces a failure; a failure never replaces an answer. A request line (method, url,
body: what `pipeline batch export` writes) is no result: it is counted unreadable and
changes no row. Prints one JSON object: ok (requests answered), failed (requests left
failed), already_answered (lines whose request had an answer, kept),
skipped_not_this_config, unreadable and first_unreadable (file, line, why), files (path
and lines read) and the store. `pipeline run CONFIG` then writes the output without
sending what was imported.

exit codes:
  0    every line was read, and none was a failure
  1    some lines were failures or could not be read; a run sends those requests online
  2    config, input or store problem, a results file is missing or unreadable, or no
       line of the files is a result of this config's requests (requests, not results;
       another config's or an earlier prompt's results): nothing was imported, and no
       store is made for a config that has none
  4    another run is using the same store
  6    internal error (a bug)
  130  interrupted (Ctrl-C); what was imported so far is kept
  143  stopped by SIGTERM (systemd's stop, timeout); as 130
"""
