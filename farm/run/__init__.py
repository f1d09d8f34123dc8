"""Running a job: open it, dispatch its units to workers (on Ray or in this process),
record the run. Ray lives here."""
