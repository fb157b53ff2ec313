"""pgr.torch_threads: one torch thread inside the block, the process's count back after its last user."""

from __future__ import annotations

import threading

import torch

from pgr.torch_threads import one_torch_thread


def test_one_torch_thread_holds_while_any_user_is_inside_and_restores_after_the_last():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_torch_thread():
            assert torch.get_num_threads() == 1
            with one_torch_thread():
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1  # the outer block is still inside
        assert torch.get_num_threads() == 2

        # two threads of one process (the re-ID stage and the matcher) whose blocks overlap: the count
        # stays 1 until the later one leaves, then comes back to 2 (not to the 1 it found inside)
        a_in, b_in, a_out, seen = threading.Event(), threading.Event(), threading.Event(), []

        def a() -> None:
            with one_torch_thread():
                a_in.set()
                b_in.wait(5)
            a_out.set()

        def b() -> None:
            a_in.wait(5)
            with one_torch_thread():
                b_in.set()
                a_out.wait(5)
                seen.append(torch.get_num_threads())

        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
