"""The task pool on its own: tasks, texts, ids by round and the index change together."""

from __future__ import annotations

import random
from dataclasses import replace

from selfinstruct_tui.engine.pool import Pool
from selfinstruct_tui.engine.seeds import Instance
from selfinstruct_tui.engine.similarity import make_index
from selfinstruct_tui.engine.task import Task

WORDS = "amber basalt cobalt dune ember fjord garnet heath iris jade kelp lagoon".split()


def task(tid: int, origin: str, round_: int = 0, text: str | None = None) -> Task:
    text = text or f"Describe the {WORDS[tid % 12]} {WORDS[(tid * 5) % 12]} of item {tid}."
    return Task(tid, origin, text, False, [Instance("", "x")], round=round_)


def pool_with(seeds: int = 8, machine_rounds: tuple[int, ...] = ()) -> Pool:
    pool = Pool(make_index())
    tasks = [task(i, "seed") for i in range(1, seeds + 1)]
    tasks += [task(seeds + 1 + n, "machine", r) for n, r in enumerate(machine_rounds)]
    pool.load(tasks)
    return pool


def test_reserved_candidates_are_compared_and_failed_ones_leave_at_their_eviction_round():
    pool = pool_with()
    text = "Plan a quiet picnic beside a mountain lake in autumn."
    assert not pool.query(text).is_duplicate
    pool.reserve(100, text, round_number=3)
    assert pool.query(text).is_duplicate and pool.text(100) == text
    pool.release(100)
    pool.evict(2)
    assert pool.query(text).is_duplicate  # not yet: round 3 is evicted later
    pool.evict(3)
    assert not pool.query(text).is_duplicate and pool.text(100) is None


def test_commit_adds_a_machine_task_for_later_rounds_only():
    pool = pool_with()
    committed = task(50, "machine", round_=4, text="Invent a riddle about a lighthouse keeper.")
    pool.reserve(50, committed.instruction, 4)
    pool.commit(committed)
    pool.evict(10)  # committed tasks are never evicted
    assert 50 in pool and pool.machine_count == 1 and pool.query(committed.instruction).is_duplicate
    rng = random.Random(1)
    early = pool.sample_examples(rng, total=8, machine=2, up_to_round=3)
    assert all(t.origin == "seed" for t in early)  # round 4 is not final for round 5
    late = pool.sample_examples(random.Random(1), total=8, machine=2, up_to_round=4)
    assert sum(t.origin == "machine" for t in late) == 1 and len(late) == 8


def test_sample_examples_is_6_seed_plus_2_machine_and_deterministic():
    pool = pool_with(seeds=20, machine_rounds=(1, 1, 2, 2, 3))
    a = pool.sample_examples(random.Random(7), total=8, machine=2, up_to_round=3)
    b = pool.sample_examples(random.Random(7), total=8, machine=2, up_to_round=3)
    assert [t.id for t in a] == [t.id for t in b]
    assert sum(t.origin == "machine" for t in a) == 2 and len(a) == 8


def test_drop_edit_and_replace_seeds_keep_the_index_in_step():
    pool = pool_with(machine_rounds=(1, 2))
    machine = pool.get(9)
    assert machine is not None
    old = machine.instruction
    new = "Compose a sea shanty about a leaky rowing boat."
    assert pool.edit(replace(machine, instruction=new, instances=[Instance("", "y")],
                             is_classification=True))
    assert not pool.edit(task(77, "machine", text=new))
    assert pool.get(9).instruction == new and pool.text(9) == new
    assert not pool.query(old).is_duplicate
    assert pool.query(new).is_duplicate
    dropped = pool.drop(9)
    assert dropped is not None and dropped.status == "dropped" and 9 not in pool
    assert dropped.instruction == new
    assert pool.machine_count == 1 and not pool.query(new).is_duplicate
    assert pool.drop(9) is None
    seed_text = pool.seeds()[0].instruction
    pool.replace_seeds([task(200, "seed", text="Name three birds that never fly at all.")])
    assert pool.seed_count == 1 and not pool.query(seed_text).is_duplicate
    assert pool.machine_count == 1  # machine tasks stay


def test_a_demoted_task_comes_back_in_round_order_and_is_sampled_like_before():
    """Promote (drop) then restore a round-2 task: the pool samples exactly as it did before,
    because the machine ids stay in round order."""
    pool = pool_with(machine_rounds=(1, 2, 2, 3, 4))
    before = [t.id for t in pool.sample_examples(random.Random(7), total=8, machine=2,
                                                 up_to_round=2)]
    moved = pool.drop(11)
    assert moved is not None and 11 not in pool and pool.machine_count == 4
    moved.status = "active"
    assert pool.restore(moved) and not pool.restore(moved)  # a second restore is a no-op
    assert pool.machine_count == 5 and pool.query(moved.instruction).max_score == 1.0
    after = [t.id for t in pool.sample_examples(random.Random(7), total=8, machine=2,
                                                up_to_round=2)]
    assert after == before


def test_the_pool_keeps_a_machine_task_s_text_and_round_not_the_whole_task():
    """Instances and most-similar lists live in the store: a pool of 1M tasks held them all
    (~2.7 GB, ~16M objects for the garbage collector)."""
    pool = pool_with(machine_rounds=(1,))
    whole = task(50, "machine", text="Plan a quiet weekend in a small harbour town.")
    whole.round = 2
    whole.instances = [Instance("", "Walk the pier.")]
    pool.commit(whole)
    held = pool.get(50)
    assert held is not whole and (held.id, held.instruction, held.round) == (50, whole.instruction, 2)
    assert held.instances == [] and held.most_similar == []
    picked = pool.sample_examples(random.Random(1), total=2, machine=2, up_to_round=2)
    assert {t.id for t in picked if t.origin == "machine"} <= {9, 50}
    seed = pool.seeds()[0]
    assert pool.get(seed.id) is seed  # seeds stay whole (the prompts and the seed manager)


def test_an_edit_or_a_drop_through_the_engine_reaches_the_store_and_the_index(tmp_path):
    """The inspector's edit works on the store's whole task (the pool holds a machine task's
    text only): the store gets the new instruction, instances and flag, and the index follows."""
    from fake_openai import FakeOpenAI
    from selfinstruct_tui.engine import events as ev
    from selfinstruct_tui.engine.control import DropTask, EditTask
    from selfinstruct_tui.engine.engine import Engine
    from selfinstruct_tui.engine.store import RunStore
    from tui_helpers import new_run

    with FakeOpenAI() as server:
        store, config = new_run(tmp_path / "run", server.base_url, target=3, concurrency=2)
        Engine(store, config).run()
        first, second = [t for t in store.tasks(status="active") if t.origin == "machine"][:2]
        new = "Compose a sea shanty about a leaky rowing boat and its stubborn captain."
        engine = Engine(store, config)
        events: list = []
        engine.bus.subscribe(events.append)
        engine.send(EditTask(first.id, new, (Instance("", "Heave ho, the water's low."),), True))
        engine.send(DropTask(second.id))
        engine.run()  # the target is reached: it applies the commands and ends
        assert engine.pool.query(new).max_score == 1.0 and first.id in engine.pool
        assert not engine.pool.query(second.instruction).is_duplicate
        store.close()
    reader = RunStore(tmp_path / "run", readonly=True)
    edited = reader.task(first.id)
    assert edited is not None and edited.instruction == new and edited.is_classification
    assert [(i.input, i.output) for i in edited.instances] == [("", "Heave ho, the water's low.")]
    assert edited.most_similar == first.most_similar  # kept from the store
    assert reader.task(second.id).status == "dropped"
    reader.close()
    [edit] = [e for e in events if isinstance(e, ev.TaskEdited)]
    assert edit.task.instruction == new and edit.task.instances
