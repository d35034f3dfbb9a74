"""Wire types of signald protocol v1, re-exported from the modules that define them.

Every frame is an envelope ``{"type": ..., "id": ..., "data": {...}}``:

- :mod:`~signald.protocol.common`: shared field types (their constraints become ``INVALID_PAYLOAD``
  errors naming the field path), constants, ``Attachment``, ``ChatMessage``, ``Limits``;
- :mod:`~signald.protocol.inbound`: one Struct per client request, the ``Inbound`` tagged union;
- :mod:`~signald.protocol.outbound`: replies and events, the ``Outbound`` tagged union;
- :mod:`~signald.protocol.types`: the frozen set of ``type`` strings, decided in that one place;
- :mod:`~signald.protocol.codec`: the decoders and encoders, built once.

The package does no I/O and holds no event loop; its modules import one another, never this package.
"""

from __future__ import annotations

# Each module's __all__ names what it contributes; the package re-exports them all.
from signald.protocol import codec, common, inbound, outbound, types
from signald.protocol.codec import *  # noqa: F403
from signald.protocol.common import *  # noqa: F403
from signald.protocol.inbound import *  # noqa: F403
from signald.protocol.outbound import *  # noqa: F403
from signald.protocol.types import *  # noqa: F403

__all__ = [*common.__all__, *inbound.__all__, *outbound.__all__, *types.__all__, *codec.__all__]
