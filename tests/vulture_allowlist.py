# ruff: noqa
"""Names vulture reports as unused in mn_node / mn_tui that are in fact used (tests/test_dead_code.py).

Vulture matches by name only: ``_.name`` stands for an attribute or method called ``name``.
Every entry says who uses it. Do not add real dead code here: delete it instead.
Checks registered with ``@check`` are ignored by the test itself (--ignore-decorators).
"""

# ---- called by a framework, never by our code ------------------------------------------------
# asyncio.BufferedProtocol callbacks of link.conn.Conn (and their required parameter)
_.connection_made
_.data_received
_.eof_received
_.connection_lost
_.pause_writing
_.resume_writing
sizehint  # get_buffer(sizehint): the protocol's signature
# logging.Filter: clears the cached traceback text of a rewritten record (mn_node/logs.py)
_.exc_text
# the mirror_neuron.tasks entry point in pyproject.toml
prime_range
# Textual: class attributes, compose/mount hooks, actions (by BINDINGS) and message handlers (by name)
TITLE
ENABLE_COMMAND_PALETTE
BINDINGS
DEFAULT_CSS
_.compose
_.on_mount
_.on_unmount
_.can_replace
_.check_action
parameters  # check_action(action, parameters): Textual's signature
_.action_tab
_.action_refresh
_.action_help
_.action_filter
_.action_clear_filter
_.on_cluster_polled
_.on_jobs_polled
_.on_box_polled
_.on_doctor_polled
_.on_jobs_pane_open
_.on_tabbed_content_tab_activated
_.on_input_changed
_.on_input_submitted
_.on_data_table_row_selected
_.on_job_screen_loaded
_.on_button_pressed

# ---- in a string: cast("Sized", v) in link/crypto.py -------------------------------------------
Sized

# ---- used by the tests: inspection hooks and reference implementations -------------------------
_.cell_text  # mn_tui Table: tests/tui/helpers.py reads the screen through it
StaticProvider  # mn_tui.fixtures: tests/tui/test_snapshots.py
fixed_clock  # mn_tui.fixtures: tests/tui/test_snapshots.py
encode_frame  # link.codec: tests/link/test_codec.py, tests/faults/fuzz.py
FrameDecoder  # link.codec: tests/link/test_manager.py, tests/faults/fuzz.py
_.buffered  # link.codec decoders: tests/link/test_codec.py
_.encrypt  # link.crypto streams: tests/link/test_manager.py, tests/faults/fuzz.py
_.decrypt
_.listening  # link.manager.LinkManager: tests/link/test_manager.py
_.renewals  # leases.LeaseManager: tests/test_leases.py
_.remaining  # leases.Lease: tests/test_leases.py

# ---- shared helpers on the base commit, for every layer to adopt (mn_node/aio.py) -------------
_.disconnect
wait_event
Backoff
_.next_delay
_.reset

# ---- public error kinds: one class per documented exit code (raised by callers of the API) ----
UsageError  # mn_node/errors.py: EX_USAGE
TempFailError  # mn_node/errors.py: EX_TEMPFAIL

# ---- PENDING: unused code in files owned by other work; delete the code, then its line here ----
_.established_wall  # mn_node/link/conn.py Conn, assigned, never read
ConnFactory  # mn_node/link/conn.py type alias
_.dropped_conns  # mn_node/link/manager.py counter, never read
_.execute_replicated  # mn_node/store.py: tests/redis_ha and tests/faults/replicated_submit.py; jobs/state.create_job is to use it
