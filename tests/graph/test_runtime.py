"""Where computations run: the task memory budget."""

from __future__ import annotations


def test_task_memory_budget_is_bounded():
    from dmask.graph.runtime import task_memory_budget

    budget = task_memory_budget()
    assert 128 * 2**20 <= budget <= 2 * 2**30
