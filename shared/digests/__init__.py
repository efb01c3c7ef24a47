"""Digests: the mailbox digest of a shared mailbox's waiting mail, and the alert digest of the alerts routed
to `mode: digest` receivers. Each run records what it will send before it sends, so a run that dies is
finished by the next one without a second mail."""
