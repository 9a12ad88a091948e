"""Repair planning as properties: after any losses, every node still receiving has a
path of parent links to the server, and no lost node is fed."""
from hypothesis import given, settings
from hypothesis import strategies as st

from kadeploy.core import repair
from kadeploy.core.topology import build_tree


def tree_parents(n, arity):
    t = build_tree(n, arity)
    return {p: t.parent(p) for p in range(1, n + 1)}


@settings(deadline=None)
@given(n=st.integers(1, 60), arity=st.integers(1, 4), data=st.data())
def test_losses_never_orphan_anyone(n, arity, data):
    parents = tree_parents(n, arity)
    lost_order = data.draw(st.lists(st.integers(1, n), unique=True, max_size=n))
    done = set(data.draw(st.lists(st.integers(1, n), unique=True, max_size=n // 3)))
    lost = set()
    for victim in lost_order:
        lost.add(victim)
        needs = set(range(1, n + 1)) - lost - done
        before = parents
        actions, parents = repair.plan(victim, parents, needs)
        assert victim not in parents
        drops = [a for a in actions if isinstance(a, repair.Drop)]
        if victim in before:
            assert drops == [repair.Drop(before[victim], victim)]
        # Exactly the victim's children that still need data are re-attached, once each.
        reattached = [a.child for a in actions if isinstance(a, repair.Reattach)]
        assert sorted(reattached) == sorted(c for c, p in before.items() if p == victim and c in needs)
        assert all(a.new_parent == repair.SERVER for a in actions if isinstance(a, repair.Reattach))
        # Nobody still receiving is left without a way up to the server.
        for node in needs:
            assert node in parents and repair.reaches_server(node, parents), (node, parents)
        for node in lost:
            assert node not in parents.values()


def test_chain_middle_loss():
    parents = tree_parents(4, 1)   # 0 <- 1 <- 2 <- 3 <- 4
    actions, after = repair.plan(2, parents, {1, 3, 4})
    assert actions == [repair.Drop(1, 2), repair.Reattach(3, repair.SERVER)]
    assert after == {1: 0, 3: 0, 4: 3}


def test_complete_children_are_not_reattached():
    parents = tree_parents(3, 2)   # 1 and 2 under the server, 3 under 1
    actions, after = repair.plan(1, parents, {2})
    assert actions == [repair.Drop(0, 1)]
    assert after == {2: 0, 3: 0}
