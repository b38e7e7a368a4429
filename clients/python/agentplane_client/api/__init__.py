# flake8: noqa

# import apis into api package
from agentplane_client.api.agents_api import AgentsApi
from agentplane_client.api.identity_api import IdentityApi
from agentplane_client.api.system_api import SystemApi

