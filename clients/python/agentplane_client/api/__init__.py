# flake8: noqa

# import apis into api package
from agentplane_client.api.agents_api import AgentsApi
from agentplane_client.api.identity_api import IdentityApi
from agentplane_client.api.knowledge_api import KnowledgeApi
from agentplane_client.api.model_registry_api import ModelRegistryApi
from agentplane_client.api.system_api import SystemApi
from agentplane_client.api.templates_api import TemplatesApi
from agentplane_client.api.tools_api import ToolsApi
from agentplane_client.api.twins_api import TwinsApi
from agentplane_client.api.usage_api import UsageApi
from agentplane_client.api.vault_api import VaultApi

