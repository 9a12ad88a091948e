"""Repair planning as properties (kadeploy.core.repair): after any losses, in any
order, for chains and trees of any arity, every node still receiving has a path of
parent links to the server, no lost node is fed, and a lost node's children take
its place under the nearest ancestor that can serve them."""
from hypothesis import given, settings
from hypothesis import strategies as st

from kadeploy.core import repair
from kadeploy.core.topology import build_tree


def tree_parents(n, arity):
    t = build_tree(n, arity)
    return {p: t.parent(p) for p in range(1, n + 1)}


@settings(deadline=None, max_examples=300)
@given(n=st.integers(1, 60), arity=st.integers(1, 4), data=st.data())
def test_losses_heal_in_place(n, arity, data):
    parents = tree_parents(n, arity)
    lost_order = data.draw(st.lists(st.integers(1, n), unique=True, max_size=n))
    done = set(data.draw(st.lists(st.integers(1, n), unique=True, max_size=n // 3)))
    lost = set()
    for victim in lost_order:
        before = dict(parents)
        lost.add(victim)
        needs = set(range(1, n + 1)) - lost - done
        can_serve = needs - set(data.draw(st.lists(st.sampled_from(sorted(needs) or [0]), max_size=3)))
        actions, parents = repair.plan(victim, parents, needs, can_serve)
        assert victim not in parents
        assert actions[0] == repair.Drop(before[victim], victim)
        up = repair.ancestors(victim, before)
        expected_parent = next((a for a in up if a in can_serve), repair.SERVER)
        for a in actions[1:]:
            assert isinstance(a, repair.Reattach)
            assert a.child in needs and before[a.child] == victim
            # The nearest ancestor of the lost node that can serve, else the server.
            assert a.new_parent == expected_parent
            assert a.new_parent == repair.SERVER or a.new_parent in can_serve
        # Only the lost node's children move; everyone else keeps their parent.
        for node, p in parents.items():
            if before[node] != victim:
                assert p == before[node]
            else:
                assert p == expected_parent
        # The server feeds no more children than before, plus the lost node's, only
        # when no ancestor could serve them (its uplink carries one stream otherwise).
        for node in needs:
            if node in parents:
                assert repair.reaches_server(node, parents), (node, parents)
        for node in lost:
            assert node not in parents.values()


def test_chain_middle_loss_heals_under_the_grandparent():
    parents = tree_parents(4, 1)   # 0 <- 1 <- 2 <- 3 <- 4
    actions, after = repair.plan(2, parents, {1, 3, 4}, can_serve={1, 3, 4})
    assert actions == [repair.Drop(1, 2), repair.Reattach(3, 1)]
    assert after == {1: 0, 3: 1, 4: 3}


def test_lost_first_node_heals_under_the_server():
    parents = tree_parents(4, 1)
    actions, after = repair.plan(1, parents, {2, 3, 4}, can_serve={2, 3, 4})
    assert actions == [repair.Drop(0, 1), repair.Reattach(2, repair.SERVER)]
    assert after == {2: 0, 3: 2, 4: 3}


def test_two_adjacent_nodes_lost_together():
    parents = tree_parents(5, 1)
    live = {1, 4, 5}
    _, parents = repair.plan(2, parents, {1, 3, 4, 5}, can_serve={1, 3, 4, 5})
    actions, parents = repair.plan(3, parents, live, can_serve=live)
    assert actions == [repair.Drop(1, 3), repair.Reattach(4, 1)]
    assert parents == {1: 0, 4: 1, 5: 4}


def test_node_lost_while_being_repaired():
    parents = tree_parents(4, 1)
    _, parents = repair.plan(2, parents, {1, 3, 4}, can_serve={1, 3, 4})   # 3 now under 1
    actions, parents = repair.plan(3, parents, {1, 4}, can_serve={1, 4})   # 3 lost in its repair
    assert actions == [repair.Drop(1, 3), repair.Reattach(4, 1)]
    assert parents == {1: 0, 4: 1}


def test_a_parent_that_cannot_serve_is_passed_over():
    parents = tree_parents(7, 2)   # 1, 2 under 0; 3, 4 under 1; 5, 6 under 2; 7 under 3
    actions, after = repair.plan(3, parents, {2, 4, 5, 6, 7}, can_serve={2, 4, 5, 6, 7})
    assert actions == [repair.Drop(1, 3), repair.Reattach(7, repair.SERVER)]   # 1 is done
    assert after[7] == repair.SERVER


def test_without_windows_every_repair_goes_to_the_server():
    parents = tree_parents(4, 1)
    actions, _ = repair.plan(2, parents, {1, 3, 4})
    assert actions == [repair.Drop(1, 2), repair.Reattach(3, repair.SERVER)]


def test_complete_children_are_not_reattached():
    parents = tree_parents(3, 2)   # 1 and 2 under the server, 3 under 1
    actions, after = repair.plan(1, parents, {2})
    assert actions == [repair.Drop(0, 1)]
    assert after == {2: 0, 3: 0}
