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


def noop():
    """Does nothing: enqueued to wake a waiting worker so that it sees it must stop."""


class RunningWorker:
    """A real RQ worker working in a thread of the test process until stopped. In the
    same process as the test, it sees what the test set up (monkeypatched resolvers,
    the test database)."""

    def __init__(self, queue):
        import threading

        self.queue = queue
        self.worker = ThreadWorker([queue], connection=queue.connection)
        self.thread = threading.Thread(target=self.worker.work, name="rq-worker", daemon=True)
        self.thread.start()

    def stop(self):
        self.worker._stop_requested = True
        self.queue.enqueue(noop)
        self.thread.join(30)
