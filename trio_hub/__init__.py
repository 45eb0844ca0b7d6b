"""trio_hub: a WebSocket broadcast hub for Trio.

Open a hub with :func:`open_hub`, register trio-websocket connections with
:meth:`Hub.serve_client`, and send with :meth:`Hub.broadcast` and
:meth:`Hub.publish`. Every public name is re-exported here.
"""

from ._auth import Grant as Grant
from ._auth import InvalidTokenError as InvalidTokenError
from ._auth import JWTAuthenticator as JWTAuthenticator
from ._auth import token_of as token_of
from ._client import Client as Client
from ._closecodes import CloseCode as CloseCode
from ._config import MessageHandler as MessageHandler
from ._errors import HubClosedError as HubClosedError
from ._errors import HubError as HubError
from ._errors import InvalidEnvelopeError as InvalidEnvelopeError
from ._errors import InvalidJSONError as InvalidJSONError
from ._errors import MessageDecodeError as MessageDecodeError
from ._errors import MessageEncodeError as MessageEncodeError
from ._errors import MessageError as MessageError
from ._errors import TransportClosed as TransportClosed
from ._history import HistoryError as HistoryError
from ._history import HistoryPolicy as HistoryPolicy
from ._history import HistoryResult as HistoryResult
from ._history import HistoryUnavailableError as HistoryUnavailableError
from ._history import Publication as Publication
from ._history import StreamPosition as StreamPosition
from ._hub import BroadcastSender as BroadcastSender
from ._hub import Hub as Hub
from ._hub import open_hub as open_hub
from ._message import JSONValue as JSONValue
from ._message import Message as Message
from ._policy import SlowClientPolicy as SlowClientPolicy
from ._presence import MAX_PRESENCE_INFO_SIZE as MAX_PRESENCE_INFO_SIZE
from ._presence import PresenceEvents as PresenceEvents
from ._presence import PresenceInfo as PresenceInfo
from ._protocol import MAX_TOPIC_LENGTH as MAX_TOPIC_LENGTH
from ._protocol import MAX_TOPICS_PER_CLIENT as MAX_TOPICS_PER_CLIENT
from ._protocol import protocol_handler as protocol_handler
from ._server import Admission as Admission
from ._server import Authenticator as Authenticator
from ._server import HandshakeRejection as HandshakeRejection
from ._server import HandshakeRequest as HandshakeRequest
from ._server import HubServer as HubServer
from ._server import serve_hub as serve_hub
from ._statistics import ClientStatistics as ClientStatistics
from ._statistics import CompressionStatistics as CompressionStatistics
from ._statistics import HubStatistics as HubStatistics
from ._transport import Transport as Transport
from ._transport import WebSocketTransport as WebSocketTransport

__version__ = "0.1.0"

__all__ = [
    "MAX_PRESENCE_INFO_SIZE",
    "MAX_TOPICS_PER_CLIENT",
    "MAX_TOPIC_LENGTH",
    "Admission",
    "Authenticator",
    "BroadcastSender",
    "Client",
    "ClientStatistics",
    "CloseCode",
    "CompressionStatistics",
    "Grant",
    "HandshakeRejection",
    "HandshakeRequest",
    "HistoryError",
    "HistoryPolicy",
    "HistoryResult",
    "HistoryUnavailableError",
    "Hub",
    "HubClosedError",
    "HubError",
    "HubServer",
    "HubStatistics",
    "InvalidEnvelopeError",
    "InvalidJSONError",
    "InvalidTokenError",
    "JSONValue",
    "JWTAuthenticator",
    "Message",
    "MessageDecodeError",
    "MessageEncodeError",
    "MessageError",
    "MessageHandler",
    "PresenceEvents",
    "PresenceInfo",
    "Publication",
    "SlowClientPolicy",
    "StreamPosition",
    "Transport",
    "TransportClosed",
    "WebSocketTransport",
    "open_hub",
    "protocol_handler",
    "serve_hub",
    "token_of",
]
