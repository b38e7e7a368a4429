# flake8: noqa

# import apis into api package
from agentplane_client.api.agents_api import AgentsApi
from agentplane_client.api.conversations_api import ConversationsApi
from agentplane_client.api.deployments_api import DeploymentsApi
from agentplane_client.api.evaluations_api import EvaluationsApi
from agentplane_client.api.events_api import EventsApi
from agentplane_client.api.executions_api import ExecutionsApi
from agentplane_client.api.identity_api import IdentityApi
from agentplane_client.api.knowledge_api import KnowledgeApi
from agentplane_client.api.marketplace_api import MarketplaceApi
from agentplane_client.api.model_registry_api import ModelRegistryApi
from agentplane_client.api.security_api import SecurityApi
from agentplane_client.api.system_api import SystemApi
from agentplane_client.api.templates_api import TemplatesApi
from agentplane_client.api.tools_api import ToolsApi
from agentplane_client.api.twins_api import TwinsApi
from agentplane_client.api.usage_api import UsageApi
from agentplane_client.api.vault_api import VaultApi
from agentplane_client.api.webhooks_api import WebhooksApi

