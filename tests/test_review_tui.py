"""The quality review in the TUI (key r) with App.run_test(): every key, the store it writes,
continuing later, and an attached UI whose answers go through a running engine."""

from __future__ import annotations

from textual.widgets import Input

from fake_openai import FakeOpenAI
from selfinstruct_tui.tui.app import create_app
from selfinstruct_tui.tui.screens.review import ReviewScreen
from tui_helpers import count_machine, deterministic_run, make_engine, read_run, run, until


def stored_reviews(run_dir):
    return read_run(run_dir, lambda store: store.reviews())


async def open_review(pilot, app) -> ReviewScreen:
    await pilot.press("r")
    await until(pilot, lambda: isinstance(app.screen, ReviewScreen))
    return app.screen


async def draw(pilot, app, size: int) -> None:
    """On the review screen's sample-size box: give the size and press enter."""
    box = app.screen.query_one("#review-size", Input)
    assert box.has_focus
    box.value = str(size)
    await pilot.press("enter")


def test_review_keys_write_the_store_and_the_review_continues_later(tmp_path, isolated_env):
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)

    async def first_session():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            assert not app.query_one("#review-summary").has_class("visible")
            screen = await open_review(pilot, app)
            assert "no sample yet" in str(screen.query_one("#review-progress").render())
            await draw(pilot, app, 5)
            await until(pilot, lambda: len(stored_reviews(run_dir)) == 5)
            first = screen.current
            assert first.next_question == "instruction"
            questions = screen.query_one("#review-questions").render()
            assert "valid task" in str(questions)
            await pilot.press("y")
            assert screen.current.task_id == first.task_id
            assert screen.current.next_question == "input"
            await pilot.press("n")
            await pilot.press("y")  # the third answer moves on to the next task
            assert screen.current.task_id != first.task_id
            second = screen.current
            await pilot.press("s")
            third = screen.current
            assert third.task_id not in (first.task_id, second.task_id)
            await pilot.press("y")
            assert "task 3 of 5 · 2 done (1 skipped) · question 2 of 3" in str(
                screen.query_one("#review-progress").render())
            await pilot.press("escape")
            assert not isinstance(app.screen, ReviewScreen)
            await until(pilot, lambda: stored_reviews(run_dir)[2].answers[0] is True)
            by_id = {r.task_id: r for r in stored_reviews(run_dir)}
            assert by_id[first.task_id].answers == (True, False, True)
            assert by_id[second.task_id].skipped
            assert by_id[third.task_id].answers == (True, None, None)
            # under the task pool (120x40), the table `selfinstruct review` prints ...
            wide = app.query_one("#pool-review")
            await until(pilot, lambda: wide.has_class("visible"))
            assert wide.display
            text = str(wide.render())
            assert "2 of 5 sampled tasks reviewed (1 skipped); 0 passed" in text
            assert "valid instruction         2  100%  34%-100%" in text
            # ... and the narrow one the statistics pane shows in the compact layout
            summary = app.query_one("#review-summary")
            assert summary.has_class("visible") and not summary.display
            text = str(summary.render())
            assert "review 2/5 done, 0 passed" in text
            # instruction: 2 yes of 2 (task 3 answered it), input 0 of 1, output 1 of 1
            assert "instr.  2 100% 34-100%" in text
            assert "input   1   0% 0-79%" in text
            assert "output  1 100% 21-100%" in text
            # r again: the same task, at the question where it stopped
            await open_review(pilot, app)
            assert app.screen.current.task_id == third.task_id
            assert app.screen.current.next_question == "input"
            await pilot.press("escape")
        return [r.task_id for r in stored_reviews(run_dir)], third.task_id

    order, third = run_and_return(first_session())

    async def second_session():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_review(pilot, app)
            assert screen.current.task_id == third and screen.current.next_question == "input"
            for _ in range(2 + 3 * 2):  # the rest of task 3, then tasks 4 and 5
                await pilot.press("y")
            assert screen.current is None
            assert "all 5 sampled tasks done" in str(screen.query_one("#review-progress")
                                                     .render())
            await draw(pilot, app, 3)  # another sample, of tasks not reviewed yet
            await until(pilot, lambda: len(stored_reviews(run_dir)) == 8)
            assert screen.current is not None
            await pilot.press("escape")

    run(second_session())
    reviews = stored_reviews(run_dir)
    assert [r.task_id for r in reviews[:5]] == order
    assert [r.sample for r in reviews] == [1] * 5 + [2] * 3
    assert len({r.task_id for r in reviews}) == 8
    assert sum(r.passed for r in reviews) == 3  # tasks 3, 4 and 5
    assert not any(r.done for r in reviews[5:])


def run_and_return(coro):
    import asyncio

    return asyncio.run(coro)


def test_in_process_review_goes_through_the_engine_while_it_runs(tmp_path, isolated_env):
    run_dir = tmp_path / "run"

    async def go():
        with FakeOpenAI(latency=0.05) as server:
            engine = make_engine(run_dir, server.base_url, target=5000)
            app = create_app(run_dir, engine=engine, refresh=0.1)
            async with app.run_test(size=(120, 40)) as pilot:
                await until(pilot, lambda: sum(r.origin == "machine"
                                               for r in app.view.rows.values()) >= 5)
                assert app.engine_active
                await open_review(pilot, app)
                await draw(pilot, app, 4)
                first = app.screen.current
                await pilot.press("y")
                await pilot.press("s")
                await pilot.press("escape")
                await until(pilot, lambda: first.task_id in app.view.reviews
                            and app.view.reviews[first.task_id].skipped)
                assert app.view.reviews[first.task_id].answers == (True, None, None)
                assert app.query_one("#pool-review").has_class("visible")
                assert app.state == "running"  # s skipped the task: it did not stop the run
                engine.stop_now()
                await until(pilot, lambda: app.state in ("stopped", "finished"), timeout=40)
        reviews = stored_reviews(run_dir)
        assert len(reviews) == 4 and reviews[0].task_id == first.task_id
        assert reviews[0].skipped and reviews[0].answers == (True, None, None)

    run(go())


def test_export_dialog_keeps_only_reviewed_tasks(tmp_path, isolated_env):
    import json

    from textual.widgets import Checkbox

    from selfinstruct_tui.engine.control import OfflineControl, ReviewAnswer, SetReviewSample

    run_dir = tmp_path / "run"
    deterministic_run(run_dir)
    control = OfflineControl(run_dir, lambda event: None)
    control.send(SetReviewSample((145, 146), (0, 0)))
    for question in ("instruction", "input", "output"):
        control.send(ReviewAnswer(145, question, True))
        control.send(ReviewAnswer(146, question, question != "output"))

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("x")
            await pilot.pause(0.2)
            app.screen.query_one("#path", Input).value = str(tmp_path / "data.json")
            app.screen.query_one("#reviewed-only", Checkbox).value = True
            await pilot.click("#export")
            await until(pilot, lambda: (tmp_path / "data.json").exists())

    run(go())
    rows = json.loads((tmp_path / "data.json").read_text())
    assert [r["output"] for r in rows] == ["output 5"] * 3  # task 145: n = 5, 3 instances


def test_a_bad_sample_size_is_refused_on_the_screen(tmp_path, isolated_env):
    run_dir = tmp_path / "run"
    deterministic_run(run_dir)

    async def go():
        app = create_app(run_dir, refresh=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            await open_review(pilot, app)
            await draw(pilot, app, 0)
            errors = app.screen.query_one("#review-errors")
            assert errors.has_class("visible")
            assert "at least 1" in str(errors.render())
            assert stored_reviews(run_dir) == []
            await pilot.press("escape")  # esc leaves from the size box too
            assert not isinstance(app.screen, ReviewScreen)
            await open_review(pilot, app)
            await draw(pilot, app, 500)  # more than the run has: all 40 of them
            await until(pilot, lambda: len(stored_reviews(run_dir)) == 40)

    run(go())


def test_attached_review_goes_through_the_running_engine(tmp_path, isolated_env):
    run_dir = tmp_path / "run"

    async def go():
        with FakeOpenAI(latency=0.05) as server:
            engine = make_engine(run_dir, server.base_url, target=5000)
            thread = engine.start_thread()
            try:
                app = create_app(run_dir, attach=True, refresh=0.1)
                async with app.run_test(size=(120, 40)) as pilot:
                    await until(pilot, lambda: count_machine(run_dir) >= 5)
                    await until(pilot, lambda: app.state == "running")
                    await until(pilot, lambda: sum(r.origin == "machine"
                                                   for r in app.view.rows.values()) >= 5)
                    await open_review(pilot, app)
                    await draw(pilot, app, 3)
                    first = app.screen.current
                    await pilot.press("n")
                    await pilot.press("escape")
                    # the engine applied the commands from the commands table ...
                    await until(pilot, lambda: len(stored_reviews(run_dir)) == 3
                                and stored_reviews(run_dir)[0].answers[0] is False)
                    # ... and the attached view got them back as events from the store
                    await until(pilot, lambda: first.task_id in app.view.reviews and
                                app.view.reviews[first.task_id].answers[0] is False)
                    assert len(app.view.reviews) == 3
            finally:
                engine.stop_now()
                thread.join(timeout=30)

    run(go())
