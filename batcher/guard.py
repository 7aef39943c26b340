"""The configuration guard: stop a misconfigured run before it fails a batch.

Until the first answer arrives, failures that every job would meet alike are
the configuration's fault, not the jobs': a base URL nothing answers on, or
a path or model that only ever gets 404 (or 405, a site that takes no
POST there), a page answering in the API's place (a 200 that is not JSON:
a sign-in page, a proxy's), a URL that redirects (batcher
does not follow redirects: the key would go along). A redirect stops the
run at once; a handful of the others stops it
with a clear message and every job still pending, instead of each job
burning its attempts (connection errors) or being failed for good (404s).
Once one answer has arrived, the same failures are ordinary again.
"""

from __future__ import annotations

from .client import Attempt
from .errors import option

#: Failures of this kind, before any answer, that stop the run.
LIMIT = 8
UNREACHABLE = frozenset({"connection_error", "timeout_error"})
#: Statuses that say nothing answers Messages API requests at this URL: no such path, or a site taking no POST there.
NOT_THERE = frozenset({404, 405})


class ConfigGuard:
    """Watches attempts until the first answer; says when to stop."""

    def __init__(self, base_url: str, limit: int = LIMIT, hold_timeouts: bool = False) -> None:
        """Before any answer, a refused connection or a 404 (405) fails no job: its attempt is not counted.

        Whether a job fails must not depend on how many others share the
        count: a three-job trial against a mistyped URL stops like a big
        batch does, with every job still pending for the corrected run. A
        timeout may be a server that is there but slow: a run lets it count
        (the job fails in the end, saying so); ``hold_timeouts`` holds it
        too, for a server's batches, which no one would run again.
        """
        self.base_url = base_url
        self.limit = limit
        self.hold_timeouts = hold_timeouts
        self.answered = False
        self.unreachable = 0
        self.not_found = 0
        self.pages = 0

    def holds(self, attempt: Attempt) -> bool:
        """A 404 (405), a page or an unreachable upstream before any answer is not yet the job's fault: retry it."""
        if self.answered or (attempt.status_code is not None and attempt.status_code not in NOT_THERE
                             and not attempt.not_json):
            return False
        return (attempt.status_code in NOT_THERE or attempt.not_json or attempt.error_type == "connection_error"
                or (self.hold_timeouts and attempt.error_type in UNREACHABLE))

    @staticmethod
    def _redirected(attempt: Attempt) -> bool:
        return attempt.status_code is not None and 300 <= attempt.status_code < 400

    def problem(self, attempt: Attempt) -> str | None:
        """A message when ``attempt`` shows the run cannot work as configured."""
        if attempt.ok:
            self.answered = True
        if self.answered:
            return None
        said = (attempt.error or {}).get("error", {}).get("message", "")
        if self._redirected(attempt):
            return said  # names the new location and the --base-url to use
        if attempt.status_code is None and attempt.error_type in UNREACHABLE:
            self.unreachable += 1
            if self.unreachable >= self.limit:
                return (f"cannot reach {self.base_url} ({said}); "
                        f"check {option('base_url')} / POE_BASE_URL and the network")
        elif attempt.status_code in NOT_THERE:
            self.not_found += 1
            if self.not_found >= self.limit:
                return (f"every request so far got HTTP {attempt.status_code} from {self.base_url}/v1/messages "
                        f"({said}); check {option('base_url')} (the host only, e.g. https://api.poe.com) and the "
                        "model names")
        elif attempt.not_json:
            self.pages += 1
            if self.pages >= self.limit:
                return (f"every request so far got a page, not an API answer, from {self.base_url}/v1/messages "
                        f"({said}); check {option('base_url')} and the network: a sign-in page or a proxy may be "
                        "answering in the API's place")
        elif attempt.status_code is not None:
            self.unreachable = 0  # something answers there
        return None
