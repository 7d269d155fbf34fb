"""Prompt views: task keys independent of the text, classified text without boilerplate."""

from __future__ import annotations

import collections
import enum
import hashlib
import threading
import types
from typing import Any, Literal

import openai
import pydantic
import pytest

from tracer_wrap.integrations import (
    LOCAL_ANSWER_BLOCKERS,
    OutputShape,
    PromptView,
    TemplateLearner,
    _prompt,
    anthropic_messages_view,
    label_field_of_schema,
    label_from_json,
    local_answer_blocker,
    openai_chat_output_shape,
    openai_chat_view,
    openai_responses_view,
    usage_of,
)

TEMPLATE = "Classify the sentiment of this review.\nReview: {}\nAnswer with one word."
REVIEWS = ["The plot was thin but the actors shine", "Terrible sound, left early",
           "A warm, funny film", "I want my money back", "Best thing I saw this year"]


def chat(text: str, system: str = "You label sentiment.", model: str = "gpt-test",
         **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "system", "content": system},
                                         {"role": "user", "content": text}], **extra}


class Mood(enum.Enum):
    happy = "happy"
    sad = "sad"


class MoodAnswer(pydantic.BaseModel):
    mood: Mood


class Detailed(pydantic.BaseModel):
    reasoning: str
    category: Literal["a", "b"]
    confidence: float


class TwoStrings(pydantic.BaseModel):
    first: str
    second: str


# -- views -----------------------------------------------------------------------------------------


def test_chat_view_key_depends_on_template_not_text() -> None:
    a, b = openai_chat_view(chat("great")), openai_chat_view(chat("awful"))
    assert a == PromptView(a.task_key, "great") and b.text == "awful"
    assert a.task_key == b.task_key and a.task_key.startswith("openai.chat:")
    assert openai_chat_view(chat("great", system="You label topics.")).task_key != a.task_key
    assert openai_chat_view(chat("great", model="gpt-other")).task_key != a.task_key
    assert openai_chat_view(chat("great", response_format=MoodAnswer)).task_key != a.task_key
    # Sampling settings do not split a task.
    assert openai_chat_view(chat("great", temperature=0.3)).task_key == a.task_key


def test_chat_view_reads_text_parts_and_skips_non_classifications() -> None:
    parts = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "first line"}, {"type": "text", "text": "second"}]}]}
    assert openai_chat_view(parts).text == "first line\nsecond"
    image = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it"}, {"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert openai_chat_view(image) is None
    assert openai_chat_view({"model": "m", "messages": [{"role": "assistant", "content": "hi"}]}) \
        is None
    assert openai_chat_view({"model": "m", "messages": []}) is None
    assert openai_chat_view(chat("   ")) is None
    free_tools = chat("x", tools=[{"type": "function",
                                   "function": {"name": "f", "parameters": {}}}])
    assert openai_chat_view(free_tools) is None
    assert openai_chat_view(chat("x", response_format=TwoStrings)) is None
    assert openai_chat_view({"messages": "not a list of messages"}) is None


def test_conversation_history_is_part_of_the_key() -> None:
    history = [{"role": "user", "content": "example: good"},
               {"role": "assistant", "content": "positive"}]
    with_history = {"model": "m", "messages": [*history, {"role": "user", "content": "bad"}]}
    other_history = {"model": "m", "messages": [history[0], {"role": "assistant", "content": "neg"},
                                                {"role": "user", "content": "bad"}]}
    assert openai_chat_view(with_history).task_key != openai_chat_view(other_history).task_key


def test_responses_view() -> None:
    a = openai_responses_view({"model": "m", "instructions": "Label it.", "input": "great"})
    b = openai_responses_view({"model": "m", "instructions": "Label it.", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "awful"}]}]})
    assert (a.text, b.text) == ("great", "awful")
    assert a.task_key.startswith("openai.responses:")
    assert openai_responses_view({"model": "m", "input": "x",
                                  "previous_response_id": "resp_1"}) is None
    assert openai_responses_view({"model": "m", "input": [
        {"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}) is None


def test_anthropic_view() -> None:
    def req(text: Any, **extra: Any) -> dict[str, Any]:
        return {"model": "claude", "max_tokens": 5, "system": "Label it.",
                "messages": [{"role": "user", "content": text}], **extra}

    a = anthropic_messages_view(req("great"))
    b = anthropic_messages_view(req([{"type": "text", "text": "awful"}]))
    assert (a.text, b.text) == ("great", "awful") and a.task_key == b.task_key
    assert a.task_key.startswith("anthropic.messages:")
    assert anthropic_messages_view(req([{"type": "image", "source": {}}])) is None
    tool = {"name": "classify",
            "input_schema": {"type": "object", "properties": {"label": {"type": "string"}}}}
    assert anthropic_messages_view(req("x", tools=[tool])) is None  # the model may not call it
    forced = anthropic_messages_view(req("x", tools=[tool],
                                         tool_choice={"type": "tool", "name": "classify"}))
    assert forced is not None and forced.task_key != a.task_key


class Answer(pydantic.BaseModel):
    category: Literal["a", "b"]


def test_task_keys_are_stable() -> None:
    """A task key names a task in the store across processes and releases: the same request
    must keep its key (pinned here), whatever changes in how it is computed."""
    learner = TemplateLearner()
    for text in ["great film", "awful sound", "fine acting", "long plot", "nice music"]:
        templated = openai_chat_view({"model": "m", "messages": [
            {"role": "user", "content": f"Review: {text}\nAnswer:"}]}, learner)
    assert templated is not None and templated.text == "nice music"
    mapping = types.MappingProxyType({"role": "user", "content": "t", 1: "x"})
    keys = {
        "plain": openai_chat_view({"model": "m", "messages": [
            {"role": "user", "content": "hello"}]}),
        "system": openai_chat_view({"model": "gpt-4o", "temperature": 0, "messages": [
            {"role": "system", "content": "Label it. Ünïcode ✓"},
            {"role": "user", "content": "hello"}]}),
        "history": openai_chat_view({"model": "m", "messages": (
            {"role": "system", "content": [{"type": "text", "text": "a"}]},
            {"role": "assistant", "content": "x", "name": None, "n": 1.5, "ok": True},
            {"role": "user", "content": "t"})}),
        "pydantic": openai_chat_view({"model": "m", "response_format": Answer,
                                      "messages": [{"role": "user", "content": "t"}]}),
        "mapping": openai_chat_view({"model": "m", "messages": [
            collections.OrderedDict([("role", "system"), ("content", "s")]), mapping]}),
        "sentinel": openai_chat_view({"model": "m", "response_format": None,
                                      "tools": openai.NOT_GIVEN,
                                      "messages": [{"role": "user", "content": "t"}]}),
        "responses": openai_responses_view({"model": "m", "instructions": "Label it.",
                                            "input": "hello"}),
        "anthropic": anthropic_messages_view({"model": "c", "max_tokens": 5,
                                              "system": "Label it.", "messages": [
                                                  {"role": "user", "content": "hello"}]}),
        "templated": templated,
    }
    assert {name: view.task_key if view else None for name, view in keys.items()} == {
        "plain": "openai.chat:8608a581d200f167b423",
        "system": "openai.chat:1e5f10f4215ca629d8f7",
        "history": "openai.chat:252d5ffb4055d3089a60",
        "pydantic": "openai.chat:c89e7c7ee080c6983a17",
        "mapping": "openai.chat:cc6bf8b634b7d9187d59",
        "sentinel": "openai.chat:6908261153e88316f3c9",
        "responses": "openai.responses:d910a0c30a4006d20e38",
        "anthropic": "anthropic.messages:44ce57491151431abf24",
        "templated": "openai.chat:3c4038e85f4e18f4396a",
    }


def test_a_call_of_a_known_template_is_digested_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A view runs on every wrapped call: once its template is known, only the request's
    context is digested (twice with a system prompt: without it too, to tell whether the text
    sits there), never its task key again."""
    digested: list[Any] = []
    real = _prompt._digest
    monkeypatch.setattr(_prompt, "_digest", lambda parts: digested.append(parts) or real(parts))
    _prompt._task_key.cache_clear()
    learner = TemplateLearner()

    def user_only(text: str) -> dict[str, Any]:
        return {"model": "m", "messages": [{"role": "user", "content": text}]}

    first = openai_chat_view(user_only("great"), learner)
    assert first is not None and len(digested) == 2  # the context, then the new task key
    digested.clear()
    second = openai_chat_view(user_only("awful"), learner)
    assert second is not None and second.task_key == first.task_key and len(digested) == 1
    first = openai_chat_view(chat("great"), learner)
    digested.clear()
    second = openai_chat_view(chat("awful"), learner)
    assert second is not None and second.task_key == first.task_key and len(digested) == 2


# -- output shapes ---------------------------------------------------------------------------------


def test_output_shapes() -> None:
    assert openai_chat_output_shape(chat("x")) == OutputShape("text")
    assert openai_chat_output_shape(chat("x", response_format=MoodAnswer)) == \
        OutputShape("json", "mood")
    assert openai_chat_output_shape(chat("x", response_format=Detailed)) == \
        OutputShape("json", "category", others=("reasoning", "confidence"))
    assert openai_chat_output_shape(chat("x", response_format={"type": "json_object"})) == \
        OutputShape("json", "label")
    tool = {"type": "function",
            "function": {"name": "pick", "parameters": MoodAnswer.model_json_schema()}}
    assert openai_chat_output_shape(chat("x", tools=[tool], tool_choice="required")) == \
        OutputShape("tool", "mood", "pick")
    assert openai_chat_output_shape(chat("x", tools=[tool], tool_choice="none")) == \
        OutputShape("text")


def test_label_field_of_schema_and_label_from_json() -> None:
    assert label_field_of_schema(MoodAnswer.model_json_schema()) == "mood"  # enum via $ref
    assert label_field_of_schema(TwoStrings.model_json_schema()) is None
    assert label_field_of_schema({"type": "object"}) is None
    assert label_from_json({"intent": "refund", "note": "x"}) == "refund"
    assert label_from_json({"mood": "happy", "score": 0.9}) == "happy"
    assert label_from_json({"a": "x", "b": "y"}) is None
    assert label_from_json(["positive"]) is None


# -- template learning -----------------------------------------------------------------------------


def test_template_learner_strips_prefix_and_suffix_and_stabilises_the_key() -> None:
    learner = TemplateLearner(min_examples=3)
    views = [openai_chat_view(chat(TEMPLATE.format(r)), learner) for r in REVIEWS]
    # Before min_examples messages the template is unknown; from then on it is stripped.
    assert views[0].text == TEMPLATE.format(REVIEWS[0])
    assert [v.text for v in views[2:]] == REVIEWS[2:]
    assert len({v.task_key for v in views[2:]}) == 1
    assert learner.templates(_only_group(learner)) == [
        ("Classify the sentiment of this review.\nReview: ", "\nAnswer with one word.")]
    # A known template splits a new message without a search, with surrounding whitespace removed.
    again = openai_chat_view(chat(TEMPLATE.format("  So so  ")), learner)
    assert again == PromptView(views[-1].task_key, "So so")


def test_template_learner_keeps_two_templates_of_one_group_apart() -> None:
    learner = TemplateLearner(min_examples=3)
    topics = [openai_chat_view(chat(f"Topic of: {r}", system=""), learner) for r in REVIEWS]
    moods = [openai_chat_view(chat(f"Mood of: {r}", system=""), learner) for r in REVIEWS]
    assert topics[-1].text == moods[-1].text == REVIEWS[-1]
    assert topics[-1].task_key != moods[-1].task_key


def test_template_learner_leaves_plain_texts_whole() -> None:
    learner = TemplateLearner(min_examples=3)
    texts = ["The movie was great", "The food was bad", "The service was slow", "The end.",
             "Hi, I would like to cancel my order", "Hi, I would like to change my address",
             "Hi, I would like to get a refund", "Hi, I would like to speak to someone"]
    views = [openai_chat_view(chat(t), learner) for t in texts]
    assert [v.text for v in views] == texts
    assert len({v.task_key for v in views}) == 1
    assert learner.templates(_only_group(learner)) == []


def test_template_learner_respects_word_boundaries_and_delimiters() -> None:
    learner = TemplateLearner(min_examples=2)
    assert learner.split("g", 'Text: "goodness"') == ("", 'Text: "goodness"', "")
    assert learner.split("g", 'Text: "good"') == ('Text: "', "good", '"')
    learner = TemplateLearner(min_examples=2)
    learner.split("g", "Label:amazing")
    assert learner.split("g", "Label:awful") == ("Label:", "awful", "")  # not "Label:a"


def test_template_learner_is_bounded_and_validates() -> None:
    with pytest.raises(ValueError):
        TemplateLearner(min_examples=1)
    learner = TemplateLearner(max_groups=2, pool_size=3)
    for group in "abc":
        for i in range(5):
            learner.split(group, f"text {i}")
    assert set(learner._groups) == {"b", "c"}
    assert all(len(pool) <= 3 for _, pool in learner._groups.values())


def test_template_learner_is_thread_safe() -> None:
    learner = TemplateLearner(min_examples=3)
    results: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def work(offset: int) -> None:
        for i in range(50):
            digest = hashlib.sha1(f"{offset}/{i}".encode()).hexdigest()
            split = learner.split("g", f"Question:\n{digest}\nEnd.")
            with lock:
                results.append(split)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 200
    assert learner.templates("g") == [("Question:\n", "\nEnd.")]
    assert sum(prefix == "Question:\n" for prefix, _, _ in results) >= 200 - 4 * 2


def _only_group(learner: TemplateLearner) -> str:
    (group,) = learner._groups
    return group


# -- usage -----------------------------------------------------------------------------------------


def test_usage_of_duck_types_and_reports_unknown_as_empty() -> None:
    from openai.types.chat import ChatCompletionChunk
    from openai.types.completion_usage import CompletionUsage, PromptTokensDetails

    usage = CompletionUsage(prompt_tokens=10, completion_tokens=2, total_tokens=12,
                            prompt_tokens_details=PromptTokensDetails(cached_tokens=4))
    chunk = ChatCompletionChunk(id="c", object="chat.completion.chunk", created=0, model="m",
                                choices=[])
    assert usage_of(chunk) == {}
    chunk.usage = usage
    assert usage_of(chunk) == {"input_tokens": 10, "output_tokens": 2, "cached_input_tokens": 4}
    assert usage_of(object()) == {}


def test_template_learner_never_cuts_at_an_apostrophe_inside_a_word() -> None:
    learner = TemplateLearner(min_examples=2)
    learner.split("g", "I don't like it")
    assert learner.split("g", "I don't know") == ("", "I don't know", "")


# -- where the text sits, and whether a prompt recurs ---------------------------------------------


def in_system(text: str) -> str:
    return f"You label sentiment.\nReview: {text}\nAnswer with one word."


def test_the_text_in_the_system_prompt_is_found_after_a_few_calls() -> None:
    learner = TemplateLearner(min_examples=3)
    views = [openai_chat_view(chat("Which label?", system=in_system(r)), learner)
             for r in REVIEWS]
    # Two calls show nothing yet (each looks like a prompt of its own); the third shows that only
    # the system prompt varies; with the two before it the learner knows the template at once.
    assert [v.slot for v in views] == ["user", "user", "system", "system", "system"]
    assert [v.recurring for v in views] == [False, False, True, True, True]
    assert [v.text for v in views[2:]] == REVIEWS[2:]
    assert len({v.task_key for v in views[2:]}) == 1
    responses = [openai_responses_view({"model": "m", "instructions": in_system(r),
                                        "input": "Which label?"}, learner) for r in REVIEWS]
    assert [v.text for v in responses[2:]] == REVIEWS[2:]
    claude = [anthropic_messages_view({"model": "c", "max_tokens": 5, "system": [
        {"type": "text", "text": in_system(r)}], "messages": [
        {"role": "user", "content": "Which label?"}]}, learner) for r in REVIEWS]
    assert [v.text for v in claude[2:]] == REVIEWS[2:]
    alone = [openai_chat_view({"model": "m", "messages": [
        {"role": "system", "content": in_system(r)}]}, learner) for r in REVIEWS]
    assert [v.slot for v in alone] == ["system"] * 5
    assert [v.recurring for v in alone] == [False, False, True, True, True]
    assert [v.text for v in alone[2:]] == REVIEWS[2:]


def test_a_constant_system_prompt_keeps_the_text_in_the_user_message() -> None:
    learner = TemplateLearner(min_examples=3)
    views = [openai_chat_view(chat(r), learner) for r in REVIEWS * 2]
    assert {v.slot for v in views} == {"user"} and [v.text for v in views] == REVIEWS * 2
    assert [v.recurring for v in views] == [False] + [True] * 9


def test_a_conversation_never_recurs() -> None:
    learner = TemplateLearner()
    history: list[dict[str, str]] = [{"role": "system", "content": "You are helpful."}]
    recurring = []
    for turn in range(6):
        history.append({"role": "user", "content": f"question {turn}"})
        recurring.append(openai_chat_view({"model": "m", "messages": history}, learner).recurring)
        history.append({"role": "assistant", "content": f"answer {turn}"})
    assert recurring == [False] * 6


def test_text_in_the_system_prompt_is_learned_with_bounded_memory() -> None:
    with pytest.raises(ValueError):
        TemplateLearner(min_system_prompts=1)
    learner = TemplateLearner(max_groups=4, min_system_prompts=2)
    for i in range(10):
        assert not learner.text_in_system(f"g{i}", "one prompt")
    assert len(learner._system_candidates) == 4
    assert not learner.text_in_system("s", "a") and learner.text_in_system("s", "b")
    assert learner.text_in_system("s", "c") and "s" not in learner._system_candidates


# -- options a local answer cannot honour ---------------------------------------------------------


def test_local_answer_blocker_names_the_option_and_reads_label_texts_only_when_needed() -> None:
    def never() -> list[str]:
        raise AssertionError("label texts are read only for stop sequences and token limits")

    assert local_answer_blocker("openai.chat", chat("x"), never) is None
    assert local_answer_blocker("openai.chat", chat("x", logprobs=True), never) == \
        "logprobs: a local answer has no log probabilities"
    assert local_answer_blocker("openai.chat", chat("x", logprobs=False, n=1), never) is None
    assert local_answer_blocker("openai.chat", chat("x", n=3), never).startswith("n: ")
    assert local_answer_blocker("anthropic.messages", {"logprobs": True}, never) is None
    texts = ["card_lost", "refund"]
    assert local_answer_blocker("openai.chat", chat("x", stop="_"), lambda: texts) == \
        "stop: a stop sequence would cut the label"
    assert local_answer_blocker("openai.chat", chat("x", stop=["\n", "##"]), lambda: texts) is None
    assert local_answer_blocker("anthropic.messages", {"stop_sequences": ["fun"]},
                                lambda: texts).startswith("stop_sequences: ")
    assert local_answer_blocker("openai.responses", {"reasoning": {"effort": "low"}}, never) \
        is None
    assert local_answer_blocker("anthropic.messages", {"thinking": {"type": "disabled"}}, never) \
        is None
    options = {(b.option, api) for b in LOCAL_ANSWER_BLOCKERS for api in b.apis}
    assert len(options) == 19 and all(b.why for b in LOCAL_ANSWER_BLOCKERS)
