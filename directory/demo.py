"""Reproducible demo data: eight community exchanges on four continents and their ads.

Everything is drawn from one `random.Random(seed)` over the tables below, so the same
seed gives the same portals, titles, places, categories and prices on every machine;
only ids, keys and timestamps differ. Ads go in through `apply_changes`, under the same
rules as the API, so the demo never holds an ad that a portal could not have published.

Loading is idempotent: when the demo portals exist already, nothing changes (their keys
cannot be shown again; `directory portals rotate-key SLUG` issues new ones), except that
demo ads past their expiry are sent again, as a portal would renew them: `make run`
months later still has ads to find."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from directory.geo import Point, Privacy
from directory.models import Ad, AdKind, Ledger, LedgerProtocol, Portal, PriceUnit, Visibility
from directory.services.ads import (
    MAX_BATCH_ITEMS,
    AdInput,
    Lifetimes,
    Price,
    Upsert,
    apply_changes,
)
from directory.services.categories import category_tree
from directory.services.currencies import BARTER, GIFT, HOUR, register_currency
from directory.services.portals import create_portal, republish_public_ads, update_profile
from directory.services.websites import trust_website

# --- portals -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    name: str
    lat: float
    lon: float


@dataclass(frozen=True)
class CommunityCurrency:
    code: str  # the short code; registered as "<portal slug>:<code>"
    name: str
    symbol: str
    hourly_rate: Decimal  # what an hour of work is usually priced at, for demo prices
    value_hours: Decimal | None = None
    value_amount: Decimal | None = None
    value_currency: str | None = None


@dataclass(frozen=True)
class DemoPortal:
    slug: str
    name: str
    description: str
    town: Place
    region: tuple[Place, ...]  # towns 5 to 70 km away, where a few members live
    languages: tuple[tuple[str, float], ...]  # (language, weight)
    default_currencies: tuple[str, ...]
    accepted: tuple[str, ...]  # what an ad may list instead of the defaults
    domain_weights: dict[str, float]  # goods / services / other: what the members trade
    weight: float  # share of the ads
    external_prefix: str  # how the portal's own ad ids look
    currency: CommunityCurrency | None = None
    ledger_prefix: str | None = None  # ledger accounts look like <prefix><member number>

    @property
    def website(self) -> str:
        return f"https://{self.slug}.example.org"

    @property
    def contact(self) -> str:
        return f"Contact form at https://{self.slug}.example.org/contact"

    @property
    def ledger(self) -> Ledger | None:
        if self.ledger_prefix is None:
            return None
        return Ledger(
            LedgerProtocol.CREDIT_COMMONS, f"https://ledger.{self.slug}.example.org/", self.slug
        )


def _community(slug: str, code: str) -> str:
    return f"{slug}:{code}"


PORTALS: tuple[DemoPortal, ...] = (
    DemoPortal(
        slug="sel-lyon",
        name="SEL de Lyon",
        description="Système d'échange local de Lyon et environs : services, savoir-faire "
        "et objets échangés en grains de sel.",
        town=Place("Lyon", 45.7640, 4.8357),
        region=(
            Place("Villeurbanne", 45.7719, 4.8902),
            Place("Vénissieux", 45.6973, 4.8858),
            Place("Caluire-et-Cuire", 45.7953, 4.8466),
            Place("Vienne", 45.5255, 4.8746),
            Place("Villefranche-sur-Saône", 45.9898, 4.7186),
            Place("L'Arbresle", 45.8353, 4.6166),
        ),
        languages=(("fr", 1.0),),
        default_currencies=(_community("sel-lyon", "GRAIN"), HOUR),
        accepted=(_community("sel-lyon", "GRAIN"), HOUR, GIFT, BARTER),
        domain_weights={"goods": 2, "services": 3, "other": 1},
        weight=1.2,
        external_prefix="annonce-",
        # Like many SELs: sixty grains for an hour, whatever the work.
        currency=CommunityCurrency(
            "GRAIN", "Grain de sel", "gr", Decimal(60), value_hours=Decimal("0.016667")
        ),
        ledger_prefix="LY",
    ),
    DemoPortal(
        slug="tauschring-freiburg",
        name="Tauschring Freiburg",
        description="Nachbarschaftshilfe und Tausch in Freiburg und im Breisgau: "
        "20 Taler sind eine Stunde.",
        town=Place("Freiburg", 47.9990, 7.8421),
        region=(
            Place("Emmendingen", 48.1211, 7.8494),
            Place("Breisach am Rhein", 48.0333, 7.5833),
            Place("Kirchzarten", 47.9667, 7.9500),
            Place("Waldkirch", 48.0939, 7.9614),
            Place("Staufen im Breisgau", 47.8820, 7.7310),
            Place("Titisee-Neustadt", 47.9139, 8.2131),
        ),
        languages=(("de", 0.94), ("en", 0.06)),  # a university town
        default_currencies=(_community("tauschring-freiburg", "TALER"), HOUR),
        accepted=(_community("tauschring-freiburg", "TALER"), HOUR, GIFT, "EUR"),
        domain_weights={"goods": 2, "services": 3, "other": 1},
        weight=1.0,
        external_prefix="anzeige-",
        currency=CommunityCurrency(
            "TALER", "Tauschtaler", "T", Decimal(20), value_hours=Decimal("0.05")
        ),
        ledger_prefix="FR",
    ),
    DemoPortal(
        slug="brixton-lets",
        name="Brixton LETS",
        description="A local exchange trading system for Brixton and south London, "
        "trading in Brix since 2009.",
        town=Place("Brixton", 51.4613, -0.1156),
        region=(
            Place("Clapham", 51.4618, -0.1384),
            Place("Stockwell", 51.4723, -0.1229),
            Place("Herne Hill", 51.4535, -0.1020),
            Place("Peckham", 51.4740, -0.0690),
            Place("Streatham", 51.4282, -0.1310),
            Place("Croydon", 51.3762, -0.0982),
            Place("Lewisham", 51.4653, -0.0134),
        ),
        languages=(("en", 0.9), ("es", 0.1)),
        default_currencies=(_community("brixton-lets", "BRIX"),),
        accepted=(_community("brixton-lets", "BRIX"), HOUR, GIFT, "GBP"),
        domain_weights={"goods": 2, "services": 3, "other": 1},
        weight=1.0,
        external_prefix="ad-",
        currency=CommunityCurrency(
            "BRIX",
            "Brix",
            "Bx",
            Decimal(12),
            value_amount=Decimal(1),
            value_currency="GBP",
        ),
        ledger_prefix="BX",
    ),
    DemoPortal(
        slug="bdt-barcelona",
        name="Banc del Temps de Barcelona",
        description="Banc del temps de barris de Barcelona: una hora val una hora, "
        "sigui quin sigui el servei.",
        town=Place("Barcelona", 41.3874, 2.1686),
        region=(
            Place("L'Hospitalet de Llobregat", 41.3597, 2.0999),
            Place("Badalona", 41.4500, 2.2474),
            Place("Sant Cugat del Vallès", 41.4722, 2.0861),
            Place("Sabadell", 41.5433, 2.1094),
            Place("Terrassa", 41.5610, 2.0089),
            Place("Mataró", 41.5381, 2.4445),
        ),
        languages=(("es", 0.55), ("ca", 0.45)),
        default_currencies=(HOUR,),
        accepted=(HOUR, GIFT),
        domain_weights={"goods": 1, "services": 4, "other": 1},
        weight=1.3,
        external_prefix="bdt-",
    ),
    DemoPortal(
        slug="bdt-buenos-aires",
        name="Banco de Tiempo Buenos Aires",
        description="Banco de tiempo porteño: intercambiamos horas de servicios y "
        "saberes entre vecinas y vecinos.",
        town=Place("Buenos Aires", -34.6037, -58.3816),
        region=(
            Place("La Plata", -34.9205, -57.9536),
            Place("Quilmes", -34.7206, -58.2546),
            Place("San Isidro", -34.4708, -58.5286),
            Place("Morón", -34.6534, -58.6198),
            Place("Tigre", -34.4260, -58.5796),
            Place("Lanús", -34.7000, -58.3917),
        ),
        languages=(("es", 1.0),),
        default_currencies=(HOUR,),
        accepted=(HOUR, GIFT, BARTER),
        domain_weights={"goods": 1, "services": 4, "other": 1},
        weight=1.0,
        external_prefix="oferta-",
    ),
    DemoPortal(
        slug="ces-cape-town",
        name="Cape Town Community Exchange",
        description="A Community Exchange System group for the Cape Peninsula and the "
        "Winelands; one Talent is worth one rand.",
        town=Place("Cape Town", -33.9249, 18.4241),
        region=(
            Place("Observatory", -33.9380, 18.4720),
            Place("Muizenberg", -34.1075, 18.4695),
            Place("Hout Bay", -34.0420, 18.3560),
            Place("Stellenbosch", -33.9321, 18.8602),
            Place("Somerset West", -34.0757, 18.8433),
            Place("Bellville", -33.9000, 18.6333),
        ),
        languages=(("en", 0.8), ("af", 0.2)),
        default_currencies=(_community("ces-cape-town", "TALENT"),),
        accepted=(_community("ces-cape-town", "TALENT"), "ZAR", GIFT),
        domain_weights={"goods": 3, "services": 3, "other": 1},
        weight=0.8,
        external_prefix="ces-",
        currency=CommunityCurrency(
            "TALENT",
            "Talent",
            "T",
            Decimal(150),
            value_amount=Decimal(1),
            value_currency="ZAR",
        ),
        ledger_prefix="CPTN",
    ),
    DemoPortal(
        slug="timebank-portland",
        name="Portland Community Timebank",
        description="Neighbors trading hours across Portland and the metro area: "
        "everyone's hour is worth the same.",
        town=Place("Portland", 45.5152, -122.6784),
        region=(
            Place("Beaverton", 45.4871, -122.8037),
            Place("Gresham", 45.4983, -122.4310),
            Place("Lake Oswego", 45.4207, -122.6706),
            Place("Milwaukie", 45.4462, -122.6393),
            Place("Vancouver", 45.6387, -122.6615),
            Place("Hillsboro", 45.5229, -122.9898),
            Place("Oregon City", 45.3573, -122.6068),
        ),
        languages=(("en", 0.92), ("es", 0.08)),
        default_currencies=(HOUR,),
        accepted=(HOUR, GIFT),
        domain_weights={"goods": 1, "services": 4, "other": 1},
        weight=0.9,
        external_prefix="tb-",
    ),
    DemoPortal(
        slug="barter-melbourne",
        name="Melbourne Barter Network",
        description="Swap goods and skills across Melbourne and Geelong, no money needed.",
        town=Place("Melbourne", -37.8136, 144.9631),
        region=(
            Place("Brunswick", -37.7670, 144.9600),
            Place("Footscray", -37.8000, 144.9000),
            Place("St Kilda", -37.8676, 144.9809),
            Place("Box Hill", -37.8190, 145.1220),
            Place("Dandenong", -37.9870, 145.2150),
            Place("Frankston", -38.1440, 145.1220),
            Place("Geelong", -38.1499, 144.3617),
        ),
        languages=(("en", 1.0),),
        default_currencies=(BARTER,),
        accepted=(BARTER, GIFT, HOUR, "AUD"),
        domain_weights={"goods": 4, "services": 2, "other": 1},
        weight=0.8,
        external_prefix="swap-",
    ),
)
SLUGS = tuple(portal.slug for portal in PORTALS)

# What an hour of work is usually priced at, for demo prices in built-in currencies.
HOURLY_RATES = {
    HOUR: Decimal(1),
    "EUR": Decimal(15),
    "GBP": Decimal(12),
    "AUD": Decimal(30),
    "ZAR": Decimal(150),
}

# --- how ads are drawn -------------------------------------------------------------------

OFFER_SHARE = 0.65
PRIVACY_WEIGHTS = (
    (Privacy.APPROXIMATE, 70),
    (Privacy.EXACT, 12),
    (Privacy.AREA, 12),
    (Privacy.HIDDEN, 6),
)
PORTAL_ONLY_SHARE = 0.05
REGIONAL_SHARE = 0.12  # ads placed in a town of the region rather than in the portal's town
TOWN_JITTER_KM = 2.5  # standard deviation around the town centre
TOWN_JITTER_MAX_KM = 7.0
REGIONAL_JITTER_KM = 1.0
KM_PER_DEGREE = 111.32
OWN_CURRENCIES_SHARE = 0.4  # ads that list currencies instead of taking the defaults
PRICED_OFFER_SHARE = 0.3
UNPRICED_CATEGORIES = {"community.volunteering"}
IMAGE_SHARE = {"goods": 0.3, "services": 0.05, "other": 0.1}
EXPLICIT_EXPIRY_SHARE = 0.15
EXPLICIT_EXPIRY_DAYS = (1, 300)
LEDGER_ACCOUNT_SHARE = 0.35
MEMBERS_PER_AD = 0.4  # so that many members have several ads
MEMBER_NUMBERS = range(1000, 10000)

# --- the words of the ads ----------------------------------------------------------------


@dataclass(frozen=True)
class Phrases:
    """How members of one language write an ad; `{subject}` is what is offered or wanted."""

    offer_titles: tuple[str, ...]
    want_titles: tuple[str, ...]
    offer_openings: tuple[str, ...]
    want_openings: tuple[str, ...]
    goods_places: tuple[str, ...]  # {place}
    service_places: tuple[str, ...]  # {place} and {when}
    whens: tuple[str, ...]
    closings: tuple[str, ...]


PHRASES: dict[str, Phrases] = {
    "en": Phrases(
        offer_titles=("Offering: {subject}", "{Subject}", "Can offer {subject}"),
        want_titles=("Wanted: {subject}", "Looking for {subject}", "Seeking {subject}"),
        offer_openings=("I can offer {subject}.", "Happy to offer {subject} to other members."),
        want_openings=("I'm looking for {subject}.", "I'd be grateful for {subject}."),
        goods_places=("Collection near {place}.", "I'm near {place}; happy to arrange a handover."),
        service_places=(
            "I'm based near {place} and usually free {when}.",
            "Around {place}, {when}.",
        ),
        whens=("on weekday evenings", "at weekends", "most mornings", "on Wednesday afternoons"),
        closings=(
            "Message me through the exchange.",
            "Reply through the site and we'll sort out the details.",
            "Thanks for reading!",
        ),
    ),
    "fr": Phrases(
        offer_titles=("Propose : {subject}", "{Subject}", "Offre : {subject}"),
        want_titles=("Recherche : {subject}", "Cherche {subject}"),
        offer_openings=("Je propose {subject}.", "Je peux proposer {subject} aux autres membres."),
        want_openings=("Je recherche {subject}.", "Avis aux membres : je cherche {subject}."),
        goods_places=(
            "À récupérer vers {place}.",
            "J'habite près de {place}, on s'arrange pour la remise.",
        ),
        service_places=(
            "J'habite près de {place} et je suis disponible {when}.",
            "Secteur {place}, {when}.",
        ),
        whens=("le soir en semaine", "le week-end", "le matin", "le mercredi après-midi"),
        closings=(
            "Contactez-moi par la messagerie du site.",
            "Au plaisir d'échanger !",
            "Merci d'avance.",
        ),
    ),
    "de": Phrases(
        # No bare "{Subject}" title: the subjects are in the accusative, after "biete".
        offer_titles=("Biete: {subject}", "Biete {subject}"),
        want_titles=("Suche: {subject}", "Suche {subject}"),
        offer_openings=(
            "Ich biete {subject} an.",
            "Gern biete ich {subject} für andere Mitglieder an.",
        ),
        want_openings=(
            "Ich suche {subject}.",
            "Falls jemand {subject} anbieten kann, freue ich mich über eine Nachricht.",
        ),
        goods_places=("Abholung in {place}.", "Ich wohne in {place}, die Übergabe machen wir aus."),
        service_places=("Ich wohne in {place} und habe {when} Zeit.", "Raum {place}, {when}."),
        whens=("abends unter der Woche", "am Wochenende", "vormittags", "mittwochnachmittags"),
        closings=(
            "Schreibt mir einfach über die Tauschring-Seite.",
            "Ich freue mich auf den Tausch!",
            "Viele Grüße",
        ),
    ),
    "es": Phrases(
        offer_titles=("Ofrezco: {subject}", "{Subject}", "Ofrezco {subject}"),
        want_titles=("Busco: {subject}", "Busco {subject}", "Necesito {subject}"),
        offer_openings=("Ofrezco {subject}.", "Puedo ofrecer {subject} a otros socios."),
        want_openings=("Busco {subject}.", "Si alguien puede ofrecer {subject}, que me escriba."),
        goods_places=("Se recoge en {place}.", "Estoy en {place}; quedamos para la entrega."),
        service_places=("Vivo en {place} y tengo tiempo {when}.", "Zona {place}, {when}."),
        whens=(
            "entre semana por la tarde",
            "los fines de semana",
            "por las mañanas",
            "los miércoles por la tarde",
        ),
        closings=(
            "Escríbeme a través de la web.",
            "¡Gracias!",
            "Lo hablamos por la plataforma.",
        ),
    ),
    "ca": Phrases(
        offer_titles=("Ofereixo: {subject}", "{Subject}"),
        want_titles=("Busco: {subject}", "Necessito {subject}"),
        offer_openings=("Ofereixo {subject}.", "Puc oferir {subject} a altres membres."),
        want_openings=("Busco {subject}.", "Si algú pot oferir {subject}, que m'escrigui."),
        goods_places=("Es recull a {place}.",),
        service_places=("Visc a {place} i tinc temps {when}.",),
        whens=("entre setmana a la tarda", "els caps de setmana", "als matins"),
        closings=("Escriviu-me a través del web.", "Gràcies!"),
    ),
    "af": Phrases(
        # No bare "{Subject}" title: a title starting with 'n capitalises the next word.
        offer_titles=("Bied aan: {subject}",),
        want_titles=("Soek: {subject}", "Op soek na {subject}"),
        offer_openings=("Ek bied {subject} aan.", "Ek kan {subject} aan ander lede aanbied."),
        want_openings=(
            "Ek soek {subject}.",
            "As iemand {subject} kan aanbied, laat weet asseblief.",
        ),
        goods_places=("Kan in {place} afgehaal word.",),
        service_places=("Ek woon in {place} en is {when} beskikbaar.",),
        whens=("saans in die week", "oor naweke", "soggens"),
        closings=("Kontak my deur die webwerf.", "Dankie!"),
    ),
}

# Per category and language: "subject | subject | ... # tag tag ...". Subjects read well
# both after "Offering:" and after "Looking for"; tags are in the same language.
CATALOGUE_TEXT: dict[str, dict[str, str]] = {
    "food.produce": {
        "en": "organic vegetables | apples and pears | free-range eggs # vegetables organic local",
        "fr": "des légumes bio | des pommes et poires du verger | des œufs frais # légumes bio circuit-court",
        "de": "Gemüse aus dem Garten | Äpfel und Birnen | frische Eier # gemüse bio regional",
        "es": "verduras ecológicas | naranjas y limones | huevos de corral # verduras ecológico local",
        "ca": "verdures de l'hort | taronges i llimones # verdures hort ecològic",
        "af": "groente uit die tuin | vars eiers # groente tuin vars",
    },
    "food.baked": {
        "en": "sourdough bread | homemade cakes | gluten-free biscuits # bread baking sourdough",
        "fr": "du pain au levain | des gâteaux maison | des brioches du dimanche # pain levain fait-maison",
        "de": "Sauerteigbrot | Hefezopf und Kuchen | Dinkelbrötchen # brot backen sauerteig",
        "es": "pan de masa madre | bizcochos caseros | galletas sin gluten # pan masa-madre casero",
        "ca": "pa de massa mare | coques casolanes # pa casolà",
        "af": "suurdeegbrood | tuisgebakte beskuit # brood bak",
    },
    "food.preserves": {
        "en": "homemade jam | local honey | pickles and chutneys # jam honey preserves",
        "fr": "des confitures maison | du miel de nos ruches | des conserves de tomates # confiture miel conserves",
        "de": "selbstgemachte Marmelade | Honig vom Imker | eingelegtes Gemüse # marmelade honig eingemacht",
        "es": "mermelada casera | miel de la sierra | conservas caseras # mermelada miel conservas",
    },
    "food.meals": {
        "en": "home-cooked meals | vegetarian lunch boxes | batch-cooked soups # meals vegetarian cooking",
        "fr": "des plats cuisinés maison | des repas végétariens | des soupes maison # repas végétarien cuisine",
        "de": "warmes Mittagessen | vegetarische Eintöpfe | Suppen zum Mitnehmen # essen vegetarisch kochen",
        "es": "comida casera | táperes vegetarianos | guisos caseros # comida vegetariano casero",
    },
    "clothing.clothes": {
        "en": "women's winter coats | men's shirts (size M) | vintage dresses # clothes second-hand",
        "fr": "des manteaux d'hiver | des chemises homme taille M | des robes vintage # vêtements seconde-main",
        "de": "Wintermäntel | Herrenhemden Größe M | Vintage-Kleider # kleidung secondhand",
        "es": "abrigos de invierno | camisas de hombre talla M | vestidos vintage # ropa segunda-mano",
        "af": "winterjasse | hemde vir mans # klere tweedehands",
    },
    "clothing.textiles": {
        "en": "wool for knitting | fabric remnants # yarn fabric knitting",
        "fr": "de la laine à tricoter | des chutes de tissu # laine tissu tricot",
        "de": "Strickwolle | Stoffreste # wolle stoff stricken",
        "es": "lana para tejer | retales de tela # lana tela tejer",
    },
    "household.furniture": {
        "en": "a kitchen table and chairs | a wooden bookshelf | a single bed frame # furniture second-hand",
        "fr": "une table de cuisine et des chaises | une étagère en bois | un lit une place # meubles occasion",
        "de": "einen Küchentisch mit Stühlen | ein Bücherregal aus Holz | ein Einzelbett # möbel gebraucht",
        "es": "una mesa de cocina con sillas | una estantería de madera | una cama individual # muebles segunda-mano",
        "ca": "una taula de cuina amb cadires | una prestatgeria de fusta # mobles segona-mà",
        "af": "'n kombuistafel met stoele | 'n boekrak # meubels tweedehands",
    },
    "household.appliances": {
        "en": "a washing machine | a microwave | a vacuum cleaner # appliances",
        "fr": "une machine à laver | un micro-ondes | un aspirateur # électroménager",
        "de": "eine Waschmaschine | eine Mikrowelle | einen Staubsauger # haushaltsgeräte",
        "es": "una lavadora | un microondas | una aspiradora # electrodomésticos",
    },
    "household.kitchenware": {
        "en": "cast-iron pans | plates and bowls | preserving jars # kitchen crockery",
        "fr": "des poêles en fonte | de la vaisselle | des bocaux en verre # cuisine vaisselle",
        "de": "gusseiserne Pfannen | Geschirr | Einmachgläser # küche geschirr",
        "es": "sartenes de hierro | una vajilla | tarros de cristal # cocina vajilla",
    },
    "garden.plants": {
        "en": "tomato seedlings | herb plants | fruit tree cuttings # plants seedlings garden",
        "fr": "des plants de tomates | des plantes aromatiques | des boutures d'arbres fruitiers # plants jardin semis",
        "de": "Tomatenpflanzen | Kräuterpflanzen | Ableger von Zimmerpflanzen # pflanzen garten",
        "es": "plantones de tomate | plantas aromáticas | esquejes de suculentas # plantas huerto",
        "ca": "planters de tomàquet | plantes aromàtiques # plantes hort",
        "af": "tamatiesaailinge | kruieplante # plante tuin",
    },
    "garden.seeds": {
        "en": "heirloom seeds | saved bean seeds # seeds heirloom seed-swap",
        "fr": "des semences paysannes | des graines de haricots # graines semences troc",
        "de": "samenfestes Saatgut | Bohnensamen # saatgut samen tausch",
        "es": "semillas tradicionales | semillas de judías # semillas huerto",
    },
    "garden.tools": {
        "en": "a lawnmower | a spade and fork | garden shears # tools garden",
        "fr": "une tondeuse | une bêche et une fourche | un sécateur # outils jardin",
        "de": "einen Rasenmäher | Spaten und Grabegabel | eine Gartenschere # werkzeug garten",
        "es": "un cortacésped | una pala y una horca | unas tijeras de podar # herramientas jardín",
    },
    "garden.firewood": {
        "en": "seasoned firewood | kindling # firewood heating",
        "fr": "du bois de chauffage sec | du petit bois d'allumage # bois chauffage",
        "de": "trockenes Brennholz | Anzündholz # brennholz heizen",
        "es": "leña seca | astillas para encender # leña",
    },
    "electronics.computers": {
        "en": "a refurbished laptop | a computer monitor | a keyboard and mouse # computers refurbished",
        "fr": "un ordinateur portable reconditionné | un écran d'ordinateur | un clavier et une souris # informatique reconditionné",
        "de": "einen gebrauchten Laptop | einen Computermonitor | Tastatur und Maus # computer gebraucht",
        "es": "un portátil reacondicionado | un monitor de ordenador | un teclado y un ratón # informática",
    },
    "electronics.phones": {
        "en": "a smartphone in working order | a tablet | phone chargers # phones",
        "fr": "un smartphone en état de marche | une tablette | des chargeurs de téléphone # téléphone",
        "de": "ein funktionierendes Smartphone | ein Tablet | Handy-Ladegeräte # handy",
        "es": "un móvil que funcione | una tableta | cargadores de móvil # móvil",
    },
    "electronics.audio-video": {
        "en": "a record player | a Bluetooth speaker # audio music",
        "fr": "une platine vinyle | une enceinte Bluetooth # audio musique",
        "de": "einen Plattenspieler | einen Bluetooth-Lautsprecher # audio musik",
        "es": "un tocadiscos | un altavoz Bluetooth # audio música",
    },
    "media.books": {
        "en": "children's books | crime novels | cookbooks # books reading",
        "fr": "des livres pour enfants | des romans policiers | des livres de cuisine # livres lecture",
        "de": "Kinderbücher | Krimis | Kochbücher # bücher lesen",
        "es": "libros infantiles | novelas policíacas | libros de cocina # libros lectura",
        "ca": "llibres infantils | novel·les en català # llibres lectura",
        "af": "kinderboeke | Afrikaanse romans # boeke lees",
    },
    "media.games": {
        "en": "board games | jigsaw puzzles # games board-games",
        "fr": "des jeux de société | des puzzles # jeux",
        "de": "Brettspiele | Puzzles # spiele",
        "es": "juegos de mesa | puzles # juegos",
    },
    "kids.toys": {
        "en": "wooden toys | Lego bricks | outdoor toys # toys kids",
        "fr": "des jouets en bois | des Lego | des jeux d'extérieur # jouets enfants",
        "de": "Holzspielzeug | Lego-Steine | Sandkastenspielzeug # spielzeug kinder",
        "es": "juguetes de madera | piezas de Lego | juguetes para el parque # juguetes niños",
    },
    "kids.baby-gear": {
        "en": "a pushchair | a baby carrier | a travel cot # baby",
        "fr": "une poussette | un porte-bébé | un lit parapluie # bébé puériculture",
        "de": "einen Kinderwagen | eine Babytrage | ein Reisebett # baby",
        "es": "un carrito de bebé | una mochila portabebés | una cuna de viaje # bebé",
        "ca": "un cotxet | una motxilla portanadons # nadó",
    },
    "kids.kids-clothes": {
        "en": "baby clothes 0-12 months | children's clothes age 4-6 # kids clothes",
        "fr": "des vêtements bébé 0-12 mois | des vêtements enfant 4-6 ans # enfants vêtements",
        "de": "Babykleidung 0-12 Monate | Kinderkleidung Gr. 110-116 # kinderkleidung",
        "es": "ropa de bebé 0-12 meses | ropa infantil 4-6 años # ropa-infantil",
    },
    "sports.bikes": {
        "en": "a child's bike | a city bike | a bike trailer # bikes cycling",
        "fr": "un vélo enfant | un vélo de ville | une remorque vélo # vélo",
        "de": "ein Kinderfahrrad | ein Stadtrad | einen Fahrradanhänger # fahrrad",
        "es": "una bicicleta infantil | una bici de paseo | un remolque para bici # bici",
        "ca": "una bicicleta infantil | una bici de passeig # bici",
    },
    "sports.outdoor": {
        "en": "a two-person tent | sleeping bags | hiking boots (size 42) # camping hiking",
        "fr": "une tente deux places | des sacs de couchage | des chaussures de randonnée # camping randonnée",
        "de": "ein Zweipersonenzelt | Schlafsäcke | Wanderschuhe Gr. 42 # camping wandern",
        "es": "una tienda de campaña para dos | sacos de dormir | botas de montaña # acampada montaña",
    },
    "crafts.handmade": {
        "en": "handmade soap | knitted hats | pottery mugs # handmade crafts",
        "fr": "des savons artisanaux | des bonnets tricotés main | des tasses en céramique # artisanat fait-main",
        "de": "handgemachte Seife | gestrickte Mützen | Keramiktassen # handgemacht",
        "es": "jabón artesanal | gorros de punto | tazas de cerámica # artesanía hecho-a-mano",
    },
    "care.childcare": {
        "en": "babysitting in the evenings | school pick-ups | after-school care # childcare kids",
        "fr": "de la garde d'enfants le soir | des sorties d'école | du baby-sitting le week-end # garde-enfants",
        "de": "Kinderbetreuung am Abend | Abholung von der Schule | Babysitten am Wochenende # kinderbetreuung",
        "es": "un canguro por las tardes | recogida del colegio | cuidado de niños el fin de semana # niños canguro",
        "ca": "cangur a la tarda | recollida de l'escola # canalla cangur",
        "af": "kinderoppas in die aand | skoolafhaal # kinders oppas",
    },
    "care.eldercare": {
        "en": "company for an elderly neighbour | shopping help for older people # elders visits",
        "fr": "de la compagnie pour une personne âgée | des courses pour personnes âgées # seniors entraide",
        "de": "Besuche bei älteren Menschen | Einkaufshilfe für Senioren # senioren nachbarschaftshilfe",
        "es": "acompañamiento a personas mayores | ayuda con la compra para mayores # mayores",
    },
    "care.petcare": {
        "en": "dog walking | cat sitting during holidays # pets dogs",
        "fr": "des promenades de chiens | de la garde de chat pendant les vacances # animaux chiens",
        "de": "Gassigehen mit Hunden | Katzenbetreuung im Urlaub # haustiere hunde",
        "es": "paseo de perros | cuidado de gatos en vacaciones # mascotas perros",
        "ca": "passejar gossos | cura de gats durant les vacances # mascotes",
        "af": "honde stap | kat oppas # troeteldiere honde",
    },
    "care.companionship": {
        "en": "a walking companion | company for a chat over coffee # company walks",
        "fr": "de la compagnie pour des balades | un moment de conversation autour d'un café # convivialité",
        "de": "Begleitung bei Spaziergängen | Gesellschaft beim Kaffee # gesellschaft",
        "es": "compañía para pasear | charla con café # compañía",
    },
    "wellbeing.massage": {
        "en": "a relaxing massage | shiatsu sessions | reflexology # massage relaxation",
        "fr": "un massage relaxant | des séances de shiatsu | de la réflexologie plantaire # massage détente",
        "de": "eine Entspannungsmassage | eine Shiatsu-Behandlung | Fußreflexzonenmassage # massage entspannung",
        "es": "un masaje relajante | sesiones de shiatsu | reflexología podal # masaje relajación",
    },
    "wellbeing.beauty": {
        "en": "haircuts at home | manicure # hair haircut",
        "fr": "une coupe de cheveux à domicile | une manucure # coiffure",
        "de": "Haareschneiden zu Hause | Maniküre # friseur",
        "es": "un corte de pelo a domicilio | una manicura # peluquería",
    },
    "wellbeing.coaching": {
        "en": "life coaching sessions | guided meditation # coaching meditation",
        "fr": "un accompagnement en développement personnel | de la méditation guidée # méditation",
        "de": "Coaching-Gespräche | geführte Meditation # coaching meditation",
        "es": "sesiones de coaching | meditación guiada # coaching meditación",
    },
    "education.tutoring": {
        "en": "maths tutoring | help with homework | science revision # tutoring school",
        "fr": "des cours de maths | de l'aide aux devoirs | du soutien en physique-chimie # soutien-scolaire",
        "de": "Mathe-Nachhilfe | Hausaufgabenhilfe | Nachhilfe in Physik # nachhilfe schule",
        "es": "clases de matemáticas | ayuda con los deberes | clases de física # clases-particulares",
        "ca": "classes de matemàtiques | ajuda amb els deures # repàs escola",
        "af": "wiskunde-klasse | huiswerkhulp # onderrig skool",
    },
    "education.languages": {
        "en": "Spanish conversation | French lessons | English for beginners # languages conversation",
        "fr": "de la conversation en anglais | des cours d'espagnol | des cours de français langue étrangère # langues",
        "de": "Englisch-Konversation | Französischunterricht | Deutsch für Anfänger # sprachen",
        "es": "conversación en inglés | clases de francés | español para extranjeros # idiomas",
        "ca": "classes de català | conversa en anglès # idiomes català",
        "af": "Afrikaanse lesse | isiXhosa vir beginners # tale",
    },
    "education.music-lessons": {
        "en": "guitar lessons | piano lessons | singing lessons # music lessons",
        "fr": "des cours de guitare | des cours de piano | des cours de chant # musique",
        "de": "Gitarrenunterricht | Klavierunterricht | Gesangsunterricht # musik",
        "es": "clases de guitarra | clases de piano | clases de canto # música",
        "ca": "classes de guitarra | classes de piano # música",
    },
    "education.workshops": {
        "en": "a bread-making workshop | a bike maintenance workshop | a sewing workshop # workshop",
        "fr": "un atelier pain | un atelier réparation de vélo | un atelier couture # atelier",
        "de": "einen Brotback-Workshop | einen Fahrrad-Reparaturkurs | einen Nähkurs # workshop kurs",
        "es": "un taller de pan | un taller de reparación de bicis | un taller de costura # taller",
    },
    "home.repairs": {
        "en": "bicycle repairs | small DIY jobs | repairs to dripping taps # repairs diy",
        "fr": "de la réparation de vélos | des petits travaux de bricolage | la réparation de fuites # bricolage réparation",
        "de": "Fahrradreparaturen | kleine Reparaturen im Haushalt | Reparatur von Wasserhähnen # reparatur heimwerken",
        "es": "reparación de bicis | pequeños arreglos en casa | arreglo de grifos # bricolaje reparaciones",
        "ca": "reparació de bicicletes | petites reparacions a casa # bricolatge",
        "af": "fietsherstel | klein herstelwerk in die huis # herstel",
    },
    "home.cleaning": {
        "en": "house cleaning | window cleaning | help with a spring clean # cleaning",
        "fr": "du ménage | du nettoyage de vitres | un grand ménage de printemps # ménage",
        "de": "Hilfe beim Putzen | Fensterputzen | Frühjahrsputz # putzen",
        "es": "limpieza del hogar | limpieza de cristales | limpieza a fondo # limpieza",
    },
    "home.gardening": {
        "en": "lawn mowing | hedge trimming | help in the vegetable garden # gardening",
        "fr": "de la tonte de pelouse | de la taille de haies | de l'aide au potager # jardinage",
        "de": "Rasenmähen | Heckenschneiden | Hilfe im Gemüsegarten # gartenarbeit",
        "es": "cortar el césped | poda de setos | ayuda en el huerto # jardinería huerto",
        "ca": "ajuda a l'hort | poda de tanques # jardineria",
        "af": "grassny | hulp in die groentetuin # tuinwerk",
    },
    "home.moving": {
        "en": "help moving house | help carrying furniture # moving",
        "fr": "de l'aide au déménagement | un coup de main pour porter des meubles # déménagement",
        "de": "Umzugshilfe | Hilfe beim Möbeltragen # umzug",
        "es": "ayuda con la mudanza | ayuda para cargar muebles # mudanza",
    },
    "home.building": {
        "en": "painting and decorating | tiling | lime plastering # building decorating",
        "fr": "de la peinture intérieure | de la pose de carrelage | des enduits à la chaux # travaux rénovation",
        "de": "Malerarbeiten | Fliesenlegen | Lehmputz # renovierung",
        "es": "pintura de interiores | alicatado | albañilería # reformas",
    },
    "tech.it-support": {
        "en": "computer help | setting up a new phone | virus removal # computers it-help",
        "fr": "du dépannage informatique | de l'aide pour configurer un smartphone | l'installation de Linux # informatique",
        "de": "Computerhilfe | Einrichtung eines Smartphones | Linux-Installation # computer",
        "es": "ayuda con el ordenador | configurar el móvil | instalación de Linux # informática",
        "ca": "ajuda amb l'ordinador | configuració del mòbil # informàtica",
        "af": "rekenaarhulp | hulp met 'n nuwe selfoon # rekenaar",
    },
    "tech.web": {
        "en": "a simple website | WordPress help # website",
        "fr": "la création d'un site web | de l'aide WordPress # site-web",
        "de": "eine einfache Website | WordPress-Hilfe # webseite",
        "es": "el diseño de una página web | ayuda con WordPress # web",
    },
    "tech.design": {
        "en": "logo design | flyer and poster design # design graphics",
        "fr": "la création d'un logo | la mise en page d'affiches # graphisme",
        "de": "Logo-Gestaltung | Flyer-Gestaltung # grafik",
        "es": "diseño de logotipos | diseño de carteles # diseño",
    },
    "tech.photo-video": {
        "en": "portrait photography | event photography | video editing # photography",
        "fr": "des photos de portrait | un photographe pour un événement | du montage vidéo # photo",
        "de": "Porträtfotos | Fotografie bei Festen | Videoschnitt # fotografie",
        "es": "fotografía de retrato | fotos de eventos | edición de vídeo # fotografía",
    },
    "transport.rides": {
        "en": "lifts to the airport | a weekly lift to the market # rides car-share",
        "fr": "du covoiturage vers l'aéroport | un trajet hebdomadaire au marché # covoiturage",
        "de": "eine Mitfahrgelegenheit zum Flughafen | Fahrten zum Wochenmarkt # mitfahren",
        "es": "un viaje compartido al aeropuerto | un viaje semanal al mercado # viaje-compartido",
        "ca": "un viatge compartit a l'aeroport # cotxe-compartit",
        "af": "'n rit na die lughawe | 'n saamry-geleentheid werk toe # saamry",
    },
    "transport.delivery": {
        "en": "small deliveries by cargo bike | collecting parcels # delivery cargo-bike",
        "fr": "des livraisons en vélo cargo | la récupération de colis # livraison vélo-cargo",
        "de": "Lieferungen mit dem Lastenrad | Pakete abholen # lastenrad lieferung",
        "es": "repartos en bici de carga | recogida de paquetes # reparto",
    },
    "transport.vehicle-repair": {
        "en": "an oil change and car service | scooter repairs # mechanic cars",
        "fr": "une vidange et un entretien auto | la réparation d'un scooter # mécanique",
        "de": "einen Ölwechsel und eine Autoinspektion | eine Rollerreparatur # kfz werkstatt",
        "es": "un cambio de aceite y revisión del coche | la reparación de una moto # mecánica",
    },
    "professional.accounting": {
        "en": "help with tax returns | bookkeeping for small projects # tax bookkeeping",
        "fr": "de l'aide à la déclaration d'impôts | la tenue de comptes associatifs # impôts compta",
        "de": "Hilfe bei der Steuererklärung | Buchhaltung für Vereine # steuern buchhaltung",
        "es": "ayuda con la declaración de la renta | contabilidad para asociaciones # impuestos contabilidad",
    },
    "professional.translation": {
        "en": "translation from Spanish to English | proofreading in English # translation",
        "fr": "des traductions anglais-français | la relecture de textes # traduction",
        "de": "Übersetzungen Englisch-Deutsch | Korrekturlesen # übersetzung",
        "es": "traducción inglés-español | corrección de textos # traducción",
        "ca": "traduccions castellà-català | correcció de textos en català # traducció",
        "af": "vertaling Engels-Afrikaans | proeflees # vertaling",
    },
    "professional.writing": {
        "en": "help writing a CV | editing of letters # cv writing",
        "fr": "de l'aide à la rédaction de CV | la rédaction de courriers administratifs # cv rédaction",
        "de": "Hilfe beim Lebenslauf | Unterstützung bei Behördenbriefen # lebenslauf",
        "es": "ayuda para redactar el currículum | redacción de cartas # currículum",
    },
    "professional.admin": {
        "en": "help with paperwork | filling in forms # paperwork admin",
        "fr": "de l'aide aux démarches administratives | de l'aide pour remplir des formulaires # paperasse",
        "de": "Hilfe bei Behördengängen | Formulare ausfüllen # formulare",
        "es": "ayuda con trámites | rellenar formularios # trámites",
    },
    "hospitality.accommodation": {
        "en": "a spare room for visiting members | a sofa for a night # hosting",
        "fr": "une chambre d'amis pour membres de passage | un canapé pour une nuit # hébergement",
        "de": "ein Gästezimmer für reisende Mitglieder | einen Schlafplatz für eine Nacht # übernachtung",
        "es": "una habitación de invitados para socios de paso | un sofá para una noche # alojamiento",
    },
    "hospitality.cooking": {
        "en": "catering for a small party | a cook for a community dinner # cooking",
        "fr": "de la cuisine pour une fête | un coup de main en cuisine pour un repas partagé # cuisine",
        "de": "Kochen für ein Fest | Hilfe in der Küche beim Nachbarschaftsessen # kochen",
        "es": "cocinar para una fiesta | ayuda en la cocina para una comida popular # cocina",
    },
    "hospitality.events": {
        "en": "help running a stall at the fair | a DJ for a birthday party # events",
        "fr": "de l'aide pour tenir un stand | un DJ pour un anniversaire # événements",
        "de": "Hilfe am Stand beim Straßenfest | einen DJ für eine Geburtstagsfeier # feste",
        "es": "ayuda con un puesto en la feria | un DJ para un cumpleaños # eventos",
    },
    "space.storage": {
        "en": "storage space in a garage | a dry cellar for boxes # storage",
        "fr": "une place dans un garage | une cave sèche pour des cartons # stockage",
        "de": "einen Lagerplatz in der Garage | einen Kellerraum als Lager # lagerraum",
        "es": "espacio en un garaje | un trastero para cajas # trastero",
    },
    "space.workspace": {
        "en": "a desk in a shared studio | a workbench for woodwork # workspace",
        "fr": "un bureau dans un atelier partagé | un établi pour la menuiserie # coworking atelier",
        "de": "einen Schreibtisch in einer Ateliergemeinschaft | eine Werkbank für Holzarbeiten # werkstatt",
        "es": "una mesa en un taller compartido | un banco de carpintería # coworking taller",
    },
    "space.land": {
        "en": "a plot to grow vegetables | a garden to share # land garden-share",
        "fr": "une parcelle à cultiver | un jardin à partager # terrain jardin-partagé",
        "de": "eine Gartenparzelle | einen Garten zum Teilen # garten land",
        "es": "una parcela para cultivar | un huerto para compartir # huerto tierra",
    },
    "lending.tool-lending": {
        "en": "a cordless drill | a ladder | a pressure washer # tools lending",
        "fr": "une perceuse sans fil | une échelle | un nettoyeur haute pression # outils prêt",
        "de": "einen Akkubohrer | eine Leiter | einen Hochdruckreiniger # werkzeug verleih",
        "es": "un taladro inalámbrico | una escalera | una hidrolimpiadora # herramientas préstamo",
        "ca": "un trepant sense fil | una escala # eines préstec",
        "af": "'n koordlose boor | 'n leer # gereedskap",
    },
    "lending.vehicle-sharing": {
        "en": "a car to borrow at weekends | a cargo bike to share # car-share cargo-bike",
        "fr": "une voiture à partager le week-end | un vélo cargo à prêter # autopartage",
        "de": "ein Auto zum Teilen am Wochenende | ein Lastenrad zum Ausleihen # carsharing",
        "es": "un coche para compartir los fines de semana | una bici de carga para prestar # coche-compartido",
    },
    "lending.equipment": {
        "en": "a projector and screen | camping gear for a weekend | a sewing machine # lending equipment",
        "fr": "un vidéoprojecteur | du matériel de camping | une machine à coudre # prêt matériel",
        "de": "einen Beamer mit Leinwand | Campingausrüstung | eine Nähmaschine # verleih",
        "es": "un proyector con pantalla | equipo de acampada | una máquina de coser # préstamo",
    },
    "community.volunteering": {
        "en": "a hand at the community garden | help at the repair café # volunteering",
        "fr": "un coup de main au jardin partagé | de l'aide au repair café # bénévolat",
        "de": "Mithilfe im Gemeinschaftsgarten | Hilfe im Repair-Café # ehrenamt",
        "es": "ayuda en el huerto comunitario | voluntariado en el repair café # voluntariado",
        "ca": "ajuda a l'hort comunitari # voluntariat",
        "af": "hulp in die gemeenskapstuin # vrywilligerswerk",
    },
}


@dataclass(frozen=True)
class Entry:
    subjects: tuple[str, ...]
    tags: tuple[str, ...]


def _entry(text: str) -> Entry:
    subjects, _, tags = text.partition("#")
    return Entry(
        subjects=tuple(subject.strip() for subject in subjects.split("|")),
        tags=tuple(tags.split()),
    )


CATALOGUE: dict[str, dict[str, Entry]] = {
    category: {language: _entry(text) for language, text in texts.items()}
    for category, texts in CATALOGUE_TEXT.items()
}

# --- the summary -------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSummary:
    created: bool  # False: the demo was there already and nothing changed
    portals: int
    ads: int
    public_ads: int
    ads_without_location: int
    languages: tuple[str, ...]
    community_currencies: int
    keys: dict[str, str] = field(default_factory=dict)  # slug -> key, only when created
    renewed: int = 0  # expired demo ads sent again by a later load

    def describe(self) -> str:
        counts = (
            f"{self.portals} portals, {self.ads} ads ({self.public_ads} public, "
            f"{self.ads - self.public_ads} for their portal only; "
            f"{self.ads_without_location} without a location)"
        )
        if not self.created:
            changed = (
                f"{self.renewed} expired demo ads renewed" if self.renewed else "nothing changed"
            )
            return (
                f"demo data already loaded, {changed}: {counts}. Keys are shown only "
                "when first loaded; `directory portals rotate-key SLUG` issues a new one."
            )
        return (
            f"demo data loaded: {counts}, in {', '.join(self.languages) or 'no language'}; "
            f"{self.community_currencies} community currencies; "
            f"{len(self.keys)} portal keys issued (shown once)"
        )


# --- loading -----------------------------------------------------------------------------


def load(session: Session, *, ad_count: int, seed: int, lifetimes: Lifetimes) -> DemoSummary:
    """Create the demo portals, their currencies and `ad_count` ads, unless the demo
    portals exist already (then only what later releases added to the demo is added:
    their ledgers, and the demo ads that have expired are sent again). Never commits:
    the caller owns the transaction."""
    if ad_count < 0:
        raise ValueError(f"ad_count must be 0 or more, not {ad_count}")
    if session.scalar(select(func.count()).select_from(Portal).where(Portal.slug.in_(SLUGS))):
        _register_missing_ledgers(session)
        renewed = _renew_expired(session, seed=seed, ad_count=ad_count, lifetimes=lifetimes)
        return _summarise(session, created=False, keys={}, renewed=renewed)
    domains = leaf_domains(session)
    keys: dict[str, str] = {}
    portal_ids: dict[str, int] = {}
    for spec in PORTALS:
        portal_ids[spec.slug], keys[spec.slug] = _create_portal(session, spec)
    now = datetime.now(UTC)
    ads = build_ads(seed=seed, ad_count=ad_count, domains=domains, now=now, lifetimes=lifetimes)
    for slug, operations in ads.items():
        _write(session, portal_id=portal_ids[slug], operations=operations, lifetimes=lifetimes)
    return _summarise(session, created=True, keys=keys)


def leaf_domains(session: Session) -> dict[str, str]:
    """The taxonomy's leaf codes with their domain (goods, services, other), checked
    against the catalogue so a renamed category fails here rather than in every ad."""
    domains = {
        child.code: child.domain for group in category_tree(session) for child in group.children
    }
    unknown = sorted(set(CATALOGUE) - set(domains))
    if unknown:
        raise RuntimeError(f"the demo catalogue uses unknown categories: {', '.join(unknown)}")
    return domains


def _create_portal(session: Session, spec: DemoPortal) -> tuple[int, str]:
    # Community codes in the defaults exist only once the portal has registered them.
    portal, key = create_portal(
        session, slug=spec.slug, name=spec.name, website=spec.website, contact=spec.contact
    )
    # Fictional sites, which no fetch could verify: vouched for as an operator would
    # (`portals verify-website --trust`), so that the demo's ads have global ids.
    trust_website(session, portal_id=portal.id)
    if spec.currency is not None:
        currency = spec.currency
        register_currency(
            session,
            portal_id=portal.id,
            code=currency.code,
            name=currency.name,
            symbol=currency.symbol,
            value_hours=currency.value_hours,
            value_amount=currency.value_amount,
            value_currency=currency.value_currency,
        )
    update_profile(
        session,
        portal_id=portal.id,
        changes={
            "description": spec.description,
            "default_currencies": list(spec.default_currencies),
        },
    )
    # Set on the model, not through update_profile: the demo's example.org ledgers do not
    # resolve, and the profile refuses a URL it cannot check.
    portal.ledger = spec.ledger
    return portal.id, key.key


def _register_missing_ledgers(session: Session) -> None:
    """A demo loaded before ledgers existed gets them, its ads with accounts republished."""
    for spec in PORTALS:
        if spec.ledger is None:
            continue
        portal = session.scalar(
            select(Portal).where(Portal.slug == spec.slug, Portal.ledger_url.is_(None))
        )
        if portal is not None:
            portal.ledger = spec.ledger
            republish_public_ads(session, portal_id=portal.id, payable_only=True)


def _renew_expired(session: Session, *, seed: int, ad_count: int, lifetimes: Lifetimes) -> int:
    """Send the demo ads that have expired again, drawn as a first load would draw them
    now (a demo ad changed through the API since gets its demo content back). Through
    apply_changes, as a portal renews an ad: the feed and search indexes follow. An ad
    the portal's present settings refuse stays expired."""
    expired = {
        (slug, external_id)
        for slug, external_id in session.execute(
            select(Portal.slug, Ad.external_id)
            .join(Portal, Portal.id == Ad.portal_id)
            .where(Portal.slug.in_(SLUGS), Ad.expires_at <= func.now())
        )
    }
    if not expired:
        return 0
    portal_ids = {
        slug: portal_id
        for slug, portal_id in session.execute(
            select(Portal.slug, Portal.id).where(Portal.slug.in_(SLUGS))
        )
    }
    ads = build_ads(
        seed=seed,
        ad_count=ad_count,
        domains=leaf_domains(session),
        now=datetime.now(UTC),
        lifetimes=lifetimes,
    )
    renewed = 0
    for slug, operations in ads.items():
        again = [op for op in operations if (slug, op.external_id) in expired]
        for start in range(0, len(again), MAX_BATCH_ITEMS):
            results = apply_changes(
                session,
                portal_id=portal_ids[slug],
                operations=again[start : start + MAX_BATCH_ITEMS],
                lifetimes=lifetimes,
                max_ads=None,  # the operator's own demo data
            )
            renewed += sum(1 for result in results if result.status == "updated")
    return renewed


def _write(
    session: Session, *, portal_id: int, operations: Sequence[Upsert], lifetimes: Lifetimes
) -> None:
    for start in range(0, len(operations), MAX_BATCH_ITEMS):
        results = apply_changes(
            session,
            portal_id=portal_id,
            operations=operations[start : start + MAX_BATCH_ITEMS],
            lifetimes=lifetimes,
            max_ads=None,  # the operator's own demo data
        )
        rejected = [result for result in results if result.status == "rejected"]
        if rejected:
            details = "; ".join(f"{r.external_id}: {r.errors}" for r in rejected[:3])
            raise RuntimeError(f"{len(rejected)} demo ads were rejected: {details}")


def _summarise(
    session: Session, *, created: bool, keys: dict[str, str], renewed: int = 0
) -> DemoSummary:
    demo_portal_ids = select(Portal.id).where(Portal.slug.in_(SLUGS))
    in_demo = Ad.portal_id.in_(demo_portal_ids)
    ads, public, without_location = session.execute(
        select(
            func.count(),
            func.count().filter(Ad.visibility == Visibility.PUBLIC),
            func.count().filter(Ad.location.is_(None)),
        )
        .select_from(Ad)
        .where(in_demo)
    ).one()
    languages = session.scalars(
        select(Ad.language).distinct().where(in_demo, Ad.language.is_not(None))
    ).all()
    return DemoSummary(
        created=created,
        portals=session.scalar(
            select(func.count()).select_from(Portal).where(Portal.slug.in_(SLUGS))
        ),
        ads=ads,
        public_ads=public,
        ads_without_location=without_location,
        languages=tuple(sorted(languages)),
        community_currencies=sum(1 for spec in PORTALS if spec.currency is not None),
        keys=keys,
        renewed=renewed,
    )


# --- drawing the ads ---------------------------------------------------------------------


def build_ads(
    *,
    seed: int,
    ad_count: int,
    domains: dict[str, str],
    now: datetime,
    lifetimes: Lifetimes,
) -> dict[str, list[Upsert]]:
    """The demo ads per portal slug; a pure function of its arguments."""
    rng = random.Random(seed)
    shares = Counter(rng.choices(SLUGS, weights=[spec.weight for spec in PORTALS], k=ad_count))
    ads: dict[str, list[Upsert]] = {}
    for spec in PORTALS:
        count = shares[spec.slug]
        member_count = min(len(MEMBER_NUMBERS), max(5, round(count * MEMBERS_PER_AD)))
        members = rng.sample(MEMBER_NUMBERS, member_count)
        ads[spec.slug] = [
            Upsert(
                f"{spec.external_prefix}{index:05d}",
                _draw_ad(rng, spec, members, domains=domains, now=now, lifetimes=lifetimes),
            )
            for index in range(1, count + 1)
        ]
    return ads


def _weighted(rng: random.Random, pairs):
    values, weights = zip(*pairs, strict=True)
    return rng.choices(values, weights=weights)[0]


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _draw_ad(
    rng: random.Random,
    spec: DemoPortal,
    members: list[int],
    *,
    domains: dict[str, str],
    now: datetime,
    lifetimes: Lifetimes,
) -> AdInput:
    language = _weighted(rng, spec.languages)
    kind = AdKind.OFFER if rng.random() < OFFER_SHARE else AdKind.WANT
    category = _draw_category(rng, spec, language, domains)
    domain = domains[category]
    entry = CATALOGUE[category][language]
    subject = rng.choice(entry.subjects)
    place, point = _draw_place(rng, spec)
    privacy = _weighted(rng, PRIVACY_WEIGHTS)
    number = rng.choice(members)
    currencies = _draw_currencies(rng, spec)
    return AdInput(
        kind=kind,
        title=_draw_title(rng, language, kind, subject, place, regional=place != spec.town.name),
        body=_draw_body(rng, language, kind, subject, place, domain),
        category=category,
        member=f"m-{number}",
        location=None if privacy is Privacy.HIDDEN else point,
        privacy=privacy,
        visibility=Visibility.PORTAL if rng.random() < PORTAL_ONLY_SHARE else Visibility.PUBLIC,
        tags=tuple(rng.sample(entry.tags, rng.randint(1, min(3, len(entry.tags))))),
        currencies=currencies,
        price=_draw_price(rng, spec, kind, category, domain, currencies),
        language=language,
        images=_draw_images(rng, spec, domain),
        expires_at=_draw_expiry(rng, now, lifetimes),
        ledger_account=(
            f"{spec.ledger_prefix}{number}"
            if spec.ledger_prefix and rng.random() < LEDGER_ACCOUNT_SHARE
            else None
        ),
    )


def _draw_category(
    rng: random.Random, spec: DemoPortal, language: str, domains: dict[str, str]
) -> str:
    domain = _weighted(rng, sorted(spec.domain_weights.items()))
    # The categories this language has words for, in a fixed order for a stable draw.
    written = sorted(code for code, texts in CATALOGUE.items() if language in texts)
    in_domain = [code for code in written if domains[code] == domain]
    return rng.choice(in_domain or written)


def _draw_place(rng: random.Random, spec: DemoPortal) -> tuple[str, Point]:
    if rng.random() < REGIONAL_SHARE:
        town = rng.choice(spec.region)
        return town.name, _jitter(rng, town, sigma_km=REGIONAL_JITTER_KM)
    return spec.town.name, _jitter(rng, spec.town, sigma_km=TOWN_JITTER_KM)


def _jitter(rng: random.Random, place: Place, *, sigma_km: float) -> Point:
    north_km = max(-TOWN_JITTER_MAX_KM, min(TOWN_JITTER_MAX_KM, rng.gauss(0, sigma_km)))
    east_km = max(-TOWN_JITTER_MAX_KM, min(TOWN_JITTER_MAX_KM, rng.gauss(0, sigma_km)))
    lat = place.lat + north_km / KM_PER_DEGREE
    lon = place.lon + east_km / (KM_PER_DEGREE * math.cos(math.radians(place.lat)))
    return Point(round(lat, 6), round(lon, 6))


def _draw_title(
    rng: random.Random, language: str, kind: AdKind, subject: str, place: str, *, regional: bool
) -> str:
    phrases = PHRASES[language]
    pattern = rng.choice(phrases.offer_titles if kind is AdKind.OFFER else phrases.want_titles)
    title = pattern.format(subject=subject, Subject=_capitalised(subject))
    # Members outside the town often say where they are, since it matters for a handover.
    if regional and rng.random() < 0.5:
        title = f"{title} ({place})"
    return title


def _draw_body(
    rng: random.Random, language: str, kind: AdKind, subject: str, place: str, domain: str
) -> str:
    phrases = PHRASES[language]
    openings = phrases.offer_openings if kind is AdKind.OFFER else phrases.want_openings
    opening = _capitalised(rng.choice(openings).format(subject=subject))
    if domain == "goods":
        where = rng.choice(phrases.goods_places).format(place=place)
    else:
        where = rng.choice(phrases.service_places).format(
            place=place, when=rng.choice(phrases.whens)
        )
    return f"{opening} {where} {rng.choice(phrases.closings)}"


def _draw_currencies(rng: random.Random, spec: DemoPortal) -> tuple[str, ...] | None:
    if rng.random() >= OWN_CURRENCIES_SHARE:
        return None  # the portal's defaults
    picked = rng.sample(spec.accepted, rng.randint(1, min(2, len(spec.accepted))))
    return tuple(sorted(picked, key=spec.accepted.index))


def _hourly_rates(spec: DemoPortal) -> dict[str, Decimal]:
    if spec.currency is None:
        return HOURLY_RATES
    return HOURLY_RATES | {_community(spec.slug, spec.currency.code): spec.currency.hourly_rate}


def _draw_price(
    rng: random.Random,
    spec: DemoPortal,
    kind: AdKind,
    category: str,
    domain: str,
    currencies: tuple[str, ...] | None,
) -> Price | None:
    if (
        kind is not AdKind.OFFER
        or category in UNPRICED_CATEGORIES
        or rng.random() >= PRICED_OFFER_SHARE
    ):
        return None
    rates = _hourly_rates(spec)
    priceable = [code for code in currencies or spec.default_currencies if code in rates]
    if not priceable:
        return None  # gifts and barter have no price
    currency = priceable[0]
    rate = rates[currency]
    if domain == "services":
        # In a time bank an hour is an hour; elsewhere members price their work a little apart.
        factor = Decimal(1) if currency == HOUR else Decimal(rng.choice(("0.75", "1", "1.5")))
        return Price(amount=_rounded(rate * factor), currency=currency, unit=PriceUnit.HOUR)
    if domain == "goods":
        unit = (
            PriceUnit.KG
            if category == "food.produce"
            else _weighted(rng, ((PriceUnit.ITEM, 2), (PriceUnit.ONCE, 1)))
        )
        factor = Decimal(rng.choice(("0.1", "0.25", "0.5", "1", "2")))
        return Price(amount=_rounded(rate * factor), currency=currency, unit=unit)
    unit = rng.choice((PriceUnit.DAY, PriceUnit.WEEK, PriceUnit.MONTH))
    factor = {PriceUnit.DAY: Decimal(1), PriceUnit.WEEK: Decimal(4), PriceUnit.MONTH: Decimal(12)}
    return Price(amount=_rounded(rate * factor[unit]), currency=currency, unit=unit)


def _rounded(amount: Decimal) -> Decimal:
    """Round as people do: 0.25 hours, 18 taler, 1125 talents -> 1100."""
    step = Decimal(100) if amount >= 1000 else Decimal(1) if amount >= 10 else Decimal("0.05")
    rounded = (amount / step).quantize(Decimal(1)) * step
    if rounded == rounded.to_integral_value():
        return rounded.quantize(Decimal(1))
    return rounded.normalize()


def _draw_images(rng: random.Random, spec: DemoPortal, domain: str) -> tuple[str, ...]:
    if rng.random() >= IMAGE_SHARE[domain]:
        return ()
    photo = rng.randrange(100_000)
    return tuple(
        f"https://{spec.slug}.example.org/media/ads/{photo:05d}-{n}.jpg"
        for n in range(1, rng.randint(1, 3) + 1)
    )


def _draw_expiry(rng: random.Random, now: datetime, lifetimes: Lifetimes) -> datetime | None:
    if rng.random() >= EXPLICIT_EXPIRY_SHARE:
        return None  # the default lifetime
    days = min(rng.randint(*EXPLICIT_EXPIRY_DAYS), lifetimes.maximum.days)
    return now + timedelta(days=days)
