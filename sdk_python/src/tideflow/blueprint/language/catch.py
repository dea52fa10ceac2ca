"""`catch`: what a block's failure turns into, judged once when the failure is seen.

```yaml
- id: charge
  external: {block: charge@1}
  catch:
    - {error_types: [CardDeclined], goto: ask_again}     # route the failure to a dependent
    - {error_types: [Duplicate]}                          # continue: the error is the output
    - {when: "error.message.contains('fraud')", compensate: true}
```

Clauses are tried in order and the first that matches wins. A clause matches when the error's
type is one of `error_types` (empty: any error; an engine-side error, a ServerFailureInfo, has
no application type and matches only an empty list; a timeout's type is `TimeoutError`) and
its `when`, over the block's scope and `error` (`{type, message}`), holds. A `when` that fails
at run time does not match. The outcome is recorded (BLOCK_CAUGHT, `CatchFailure`), so a
replay never evaluates it against other data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language.commands import CatchFailure
from tideflow.blueprint.language.kinds.base import Site
from tideflow.blueprint.language.model import JSON, BlockError
from tideflow.blueprint.language.templates import Env, Expression, ExpressionError

ERROR_VARIABLE = "error"

NONE = blueprint_pb2.CATCH_ACTION_NONE
GOTO = blueprint_pb2.CATCH_ACTION_GOTO
CONTINUE = blueprint_pb2.CATCH_ACTION_CONTINUE
COMPENSATE = blueprint_pb2.CATCH_ACTION_COMPENSATE


@dataclass(frozen=True, slots=True)
class CatchClause:
    error_types: frozenset[str]
    when: Expression | None
    goto: str
    compensate: bool

    @property
    def action(self) -> blueprint_pb2.CatchAction.ValueType:
        if self.compensate:
            return COMPENSATE
        return GOTO if self.goto else CONTINUE

    def matches(self, error: BlockError, env: Env) -> bool:
        if self.error_types and (error.server or error.type not in self.error_types):
            return False
        if self.when is None:
            return True
        try:
            return self.when.evaluate_bool(env)
        except ExpressionError:
            return False


def check(site: Site) -> tuple[CatchClause, ...]:
    """The block's clauses, every problem reported with its path (`blocks[2].catch[0].goto`)."""
    clauses: list[CatchClause] = []
    for j, clause in enumerate(site.block.catch):
        path = f"{site.path}.catch[{j}]"
        for k, error_type in enumerate(clause.error_types):
            if not error_type:
                site.report(f"{path}.error_types[{k}]", "empty error type")
        when = None
        if clause.when:
            reads = frozenset({ERROR_VARIABLE})
            when = site.condition(clause.when, f"{path}.when", reads=reads)
        if clause.goto and clause.compensate:
            site.report(path, "a clause either goes to a block or compensates, not both")
        elif clause.goto:
            site.goto(clause.goto, f"{path}.goto")
        clauses.append(
            CatchClause(frozenset(clause.error_types), when, clause.goto, clause.compensate)
        )
    return tuple(clauses)


def judge(
    block_id: str, clauses: Sequence[CatchClause], error: BlockError, env: Env
) -> CatchFailure:
    """What the first matching clause does with `error`; NONE when no clause matches."""
    for index, clause in enumerate(clauses):
        if clause.matches(error, env):
            output: JSON = None
            if clause.action == CONTINUE:
                output = {"type": error.type, "message": error.message}
            return CatchFailure(block_id, index, clause.action, clause.goto, output)
    return CatchFailure(block_id, -1, NONE)
