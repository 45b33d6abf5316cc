"""Real RQ workers for tests."""

from rq import SimpleWorker
from rq.timeouts import TimerDeathPenalty


class ThreadWorker(SimpleWorker):
    """A real RQ worker that can run in a thread of the test process: signal handlers
    can only be installed in the main thread, and a test has no use for them. Job
    timeouts use a timer thread instead of SIGALRM for the same reason."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self):
        pass


def work_burst(queue):
    """Run every job on the queue with a real worker in burst mode, in this thread."""
    ThreadWorker([queue], connection=queue.connection).work(burst=True)
