"""Every question is answerable from its gold documents, and its kind means what it says."""

from collections import Counter

from clara.world.lexical import overlap_scores, shared_content_words
from clara.world.questions import OCCUPATION_PARAPHRASES, states


def _docs(world):
    return world.document_index()


def _ref_name(value):
    return value["name"] if isinstance(value, dict) else value


def test_single_hop_answers_match_facts_and_text(world300, facts_by_doc, all_questions):
    docs = _docs(world300)
    checked = 0
    for q in all_questions:
        if q["type"] != "single_hop":
            continue
        (gold,) = q["gold_ids"]
        fact = _ref_name(facts_by_doc[gold]["attributes"][q["relation"]])
        assert str(fact) == q["answers"][0].replace(",", "") or f"{fact:,}" == q["answers"][0], q
        assert states(docs[gold]["text"], q["answers"][0]), (q, docs[gold]["text"])
        assert facts_by_doc[gold]["name"] in q["question"]
        checked += 1
    assert checked >= 400


def test_two_hop_answers_follow_the_bridge(world300, facts_by_doc, all_questions):
    docs = _docs(world300)
    kinds = Counter()
    for q in all_questions:
        if not q["type"].startswith("two_hop"):
            continue
        first, second = q["gold_ids"]
        bridge_rel, rel = q["relation"].split(">")
        bridge = facts_by_doc[first]["attributes"][bridge_rel]
        assert bridge["entity_id"] == facts_by_doc[second]["entity_id"], q
        assert str(_ref_name(facts_by_doc[second]["attributes"][rel])) == q["answers"][-1], q
        assert states(docs[second]["text"], q["answers"][0]), q
        assert states(docs[first]["text"], bridge["name"]), q  # the first article leads on
        assert facts_by_doc[first]["name"] in q["question"]
        if q["type"] == "two_hop_linked":
            assert states(docs[second]["text"], facts_by_doc[first]["name"]), q
        else:
            assert not shared_content_words(q["question"], docs[second]["text"]), q
            assert not states(docs[second]["text"], facts_by_doc[first]["name"].split()[0]), q
        kinds[q["type"]] += 1
    assert kinds["two_hop_linked"] >= 50 and kinds["two_hop_hidden"] >= 50, kinds


def test_hidden_and_linked_differ_for_word_matching(world300, all_questions):
    # Linked: the second document shares at least the first entity's name with the question.
    # Hidden: it shares nothing, so a scorer over words gives it 0.
    docs = _docs(world300)
    for q in all_questions:
        if q["type"].startswith("two_hop"):
            (score,) = overlap_scores(q["question"], [docs[q["gold_ids"][1]]["text"]])
            assert (score == 0) == (q["type"] == "two_hop_hidden"), (score, q)
    hidden = {q["relation"] for q in all_questions if q["type"] == "two_hop_hidden"}
    linked = {q["relation"] for q in all_questions if q["type"] == "two_hop_linked"}
    assert len(hidden) >= 5 and len(linked) >= 3, (hidden, linked)  # several bridge paths


def test_comparison_answer_is_the_right_one(world300, facts_by_doc, all_questions):
    docs = _docs(world300)
    comparisons = [q for q in all_questions if q["type"] == "comparison"]
    assert comparisons
    for q in comparisons:
        a, b = (facts_by_doc[g] for g in q["gold_ids"])
        va, vb = a["attributes"][q["relation"]], b["attributes"][q["relation"]]
        assert va != vb
        text = q["question"]
        wants_max = any(w in text for w in ("later", "younger", "more"))
        winner = a if (va > vb) == wants_max else b
        assert q["answers"] == [winner["name"]], q
        assert states(docs[winner["doc_id"]]["text"], winner["name"])


def test_description_cues_shared_but_combination_unique(world300, facts_by_doc, all_questions):
    people = [f for f in world300.facts if f["entity_type"] == "person"]

    def cues(f):
        a = f["attributes"]
        return a["occupation"], a["birth_city"]["entity_id"], a["birth_year"]

    combos = Counter(cues(p) for p in people)
    singles = [Counter(cues(p)[i] for p in people) for i in range(3)]
    described = [q for q in all_questions if q["type"] == "description"]
    assert len(described) >= 50
    for q in described:
        person = facts_by_doc[q["gold_ids"][0]]
        c = cues(person)
        assert q["answers"] == [person["name"]]
        assert combos[c] == 1, q
        assert all(singles[i][c[i]] >= 2 for i in range(3)), q
        occ = person["attributes"]["occupation"]
        assert occ in q["question"] or OCCUPATION_PARAPHRASES[occ] in q["question"]
        assert person["attributes"]["birth_city"]["name"] in q["question"] and str(c[2]) in q["question"]
