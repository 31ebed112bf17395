"""Stop signals: what they record and the handlers they put back."""

import signal
from concurrent.futures import ThreadPoolExecutor

from selfdistill.engine.preemption import StopSignals


def test_stop_signals_record_a_signal_and_put_the_previous_handler_back():
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda *_: seen.append("previous"))
    try:
        with StopSignals(["SIGUSR2"], on_signal=seen.append) as stop:
            assert stop.received == 0
            signal.raise_signal(signal.SIGUSR2)
        assert stop.received == signal.SIGUSR2 and seen == [signal.SIGUSR2]
        signal.raise_signal(signal.SIGUSR2)
        assert seen == [signal.SIGUSR2, "previous"]

        def handler_in_thread():
            with StopSignals(["SIGUSR2"]):
                return signal.getsignal(signal.SIGUSR2)

        # handlers belong to the main thread: entered in another, it catches nothing (and does not fail)
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(handler_in_thread).result() is signal.getsignal(signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
